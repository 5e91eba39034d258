//! Compiles etcd's API (`proto/`) with prost, plus tonic service stubs when feature `grpc` is on.
//! protoc comes from the protoc-bin-vendored crate unless PROTOC names one, so a fresh machine
//! needs nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: a build script is single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let protos = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/v3lockpb/v3lock.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .bytes(".")
        // prost's codec plus a bound on txn nesting (src/grpc_codec.rs).
        .codec_path("crate::grpc_codec::EtcdCodec")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
