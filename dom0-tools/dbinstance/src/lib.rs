//! Control of MariaDB server instances for dbfork: configs and datadirs, readiness,
//! stop,
//! consistent points, replication, hot-page lists and file extents.
//! See README.md for what this crate owns and what it does not.

pub mod backup;
pub mod config;
pub mod consistent;
pub mod error;
pub mod external;
pub mod fiemap;
pub mod flush;
pub mod gtid;
pub mod hotpages;
pub mod instance;
pub mod memory;
pub mod option_file;
pub mod preflight;
pub mod procfs;
pub mod replication;
pub mod sql;
pub mod tools;

pub use config::InstanceConfig;
pub use consistent::ConsistentPoint;
pub use error::{Error, Result};
pub use flush::{flush_dirty_pages, FlushReport};
pub use gtid::{Gtid, GtidPos};
pub use hotpages::{
    dump_buffer_pool, parse_buffer_pool_dump, tablespace_files, PageId, TablespaceFile,
};
pub use instance::{running_pid, Instance, ReplCredentials, StartPlan, REPL_USER};
pub use preflight::free_port;
pub use replication::{
    checksum_all_tables, configure_replica, connect_to_source, next_server_id, replication_status,
    resume_replica, wait_caught_up, ReplicationSource, ReplicationStatus, REACH_SOURCE_FOR,
};
