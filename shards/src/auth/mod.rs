//! etcd's auth store on corekv: users, roles and key-range permissions, replicated through
//! group 0's log, and what request handlers read of it.
//!
//! - [`state`]: the store and etcd's rules for changing it (pure; group 0's shard applies
//!   every change on every member, and at recovery).
//! - [`perm`]: key-range permissions as merged interval sets.
//! - [`view`]: the snapshot request handlers check against, swapped atomically after every
//!   change — no lock on the request path.
//! - [`tokens`]: simple tokens, issued through the log, kept in memory.

pub mod perm;
pub mod state;
pub mod tokens;
pub mod view;

pub use state::{AuthError, AuthState, ROOT};
pub use tokens::{TokenLookup, Tokens};
pub use view::{Access, AuthSnapshot, AuthView, Identity};
