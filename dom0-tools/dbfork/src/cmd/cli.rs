//! The command-line surface (clap derive). Verbs follow xl's habits: a verb, a name,
//! `--json` for scripts.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Filesystems a new source volume can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl From<FsType> for substrate::FsType {
    fn from(f: FsType) -> Self {
        match f {
            FsType::Ext4 => substrate::FsType::Ext4,
            FsType::Xfs => substrate::FsType::Xfs,
        }
    }
}

/// Where the instance's database server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubstrateArg {
    /// A server process on this host.
    Local,
    /// A Xen domU (dbfork in dom0).
    Xen,
}

impl From<SubstrateArg> for substrate::Kind {
    fn from(s: SubstrateArg) -> Self {
        match s {
            SubstrateArg::Local => substrate::Kind::Local,
            SubstrateArg::Xen => substrate::Kind::Xen,
        }
    }
}

/// Fork warm read replicas of a running MariaDB/MySQL instance.
#[derive(Parser, Debug)]
#[command(name = "dbfork", version, about, propagate_version = true)]
pub struct Cli {
    /// Store directory of volumes and runtime state.
    #[arg(long, global = true, env = "DBFORK_STORE", default_value = substrate::DEFAULT_STORE)]
    pub store: PathBuf,
    /// Machine-readable output (JSON on stdout).
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Volumes, snapshots and lazy clones.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Database sources: managed MariaDB instances that replicas are forked from.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Fork a live instance into a warm read replica (lazy clone + replication).
    Clone {
        /// The source (or replica) to fork.
        source: String,
        /// Name of the new replica.
        new: String,
        /// Background hydration limit in MiB/s (default: unlimited).
        #[arg(long, value_parser = rate, allow_hyphen_values = true)]
        rate: Option<u64>,
        /// TCP port of the new server (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Buffer pool of the new server (default: the source's).
        #[arg(long, value_parser = size, allow_hyphen_values = true)]
        buffer_pool: Option<u64>,
        /// Do not queue the boot files and hot pages for hydration first.
        #[arg(long)]
        no_prefetch: bool,
        /// Copy the whole volume before starting the server (a full copy, as the
        /// DBMS-native path does; for comparisons).
        #[arg(long)]
        hydrate_first: bool,
        /// Do not share buffer-pool pages with the family.
        #[arg(long)]
        no_sharing: bool,
        /// Start with a cold buffer pool (do not load the source's page dump).
        #[arg(long)]
        no_buffer_pool_load: bool,
        /// Do not flush the source's dirty pages before the snapshot (the replica's
        /// crash recovery then redoes more). Without it the flush runs when the source
        /// is not taking writes (under a write load it could not finish, and its page
        /// writes would delay the source's commits).
        #[arg(long)]
        no_flush: bool,
        /// Limit the replica server's reads on its volume to N per second (the
        /// kernel's IO controller; e.g. 150 models a 7200 rpm disk).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), allow_hyphen_values = true)]
        read_iops: Option<u32>,
        /// Where the replica runs (default: where its parent runs).
        #[arg(long, value_enum)]
        substrate: Option<SubstrateArg>,
        /// Memory of the replica's domU (Xen; default: the parent's).
        #[arg(long, value_parser = size, allow_hyphen_values = true)]
        memory: Option<u64>,
        /// vCPUs of the replica's domU (Xen; default: the parent's).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..), allow_hyphen_values = true)]
        vcpus: Option<u32>,
    },
    /// List managed instances.
    List,
    /// Role, state, replication lag, hydration progress of an instance.
    Status {
        name: String,
        /// Keep redrawing until hydrated and caught up (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
    },
    /// Start a stopped instance again (after `stop`, a crash or a host reboot): its
    /// volume attached again where it left off, its server with its agent in the same
    /// role, a replica replicating again from where it stopped.
    Start {
        /// The instance.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every instance of the store, sources before their replicas (what the boot
        /// unit runs).
        #[arg(long)]
        all: bool,
    },
    /// Stop an instance's server cleanly and release its volume (`start` brings it
    /// back; a source's replicas keep serving reads and reconnect then).
    Stop {
        /// The instance.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every instance of the store, replicas before their sources (what the boot
        /// unit runs at shutdown).
        #[arg(long)]
        all: bool,
    },
    /// Stop and start an instance (also one whose server lost its disk).
    Restart { name: String },
    /// Stop an instance, delete its volume and forget it.
    Destroy {
        name: String,
        /// Destroy a source's replicas too.
        #[arg(long)]
        with_replicas: bool,
    },
    /// The end-to-end demonstration that the README's main command runs.
    Demo(DemoArgs),
}

#[derive(Subcommand, Debug)]
pub enum SourceCommand {
    /// New volume, filesystem and MariaDB datadir (binlog + GTID), server started.
    Create {
        name: String,
        /// Volume size.
        #[arg(long, default_value = "2G", value_parser = size, allow_hyphen_values = true)]
        size: u64,
        /// InnoDB buffer pool size.
        #[arg(long, default_value = "128M", value_parser = size, allow_hyphen_values = true)]
        buffer_pool: u64,
        /// Filesystem for the datadir.
        #[arg(long, value_enum, default_value = "ext4")]
        fs: FsType,
        /// TCP port (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Region size of the source's volume: the unit a write after a snapshot
        /// copies when it covers a region only in part (power of two, 4K-1M).
        #[arg(long, value_parser = size, allow_hyphen_values = true, default_value = "64K")]
        region_size: u64,
        /// Where the server runs: local (a process on this host; the default) or xen
        /// (a domU; the default with --domain-config).
        #[arg(long, value_enum)]
        substrate: Option<SubstrateArg>,
        /// The source domU's xl config (Xen): dbfork serves its database disk (see
        /// --database-vdev) from the new volume and keeps the rest as written.
        #[arg(long, value_name = "FILE")]
        domain_config: Option<PathBuf>,
        /// The guest device of the database disk in --domain-config.
        #[arg(long, default_value = "xvdb", requires = "domain_config")]
        database_vdev: String,
        /// What the datadir lives on: a directory on the store's file system where it
        /// shares extents (reflink: in-kernel IO, instant complete clones), or a block
        /// volume cloned lazily over NBD (lazy: any store). auto picks reflink where the
        /// store's file system can.
        #[arg(long, value_enum, default_value = "auto")]
        volume_engine: EngineArg,
    },
    /// Fork a MariaDB server you already run, online: it keeps running untouched and
    /// stays the primary. dbfork makes a replication account on it, streams a
    /// consistent copy of its data (mariadb-backup) into a new volume, and starts a
    /// base instance NAME there that replicates from it by GTID; `dbfork clone NAME
    /// NEW` forks the base. Refuses first, changing nothing, whatever would keep that
    /// from working (--check: only that).
    Adopt {
        name: String,
        /// The server's Unix socket (Debian's: /run/mysqld/mysqld.sock). dbfork logs in
        /// as root there (unix_socket) unless --defaults-file gives a login.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// An option file whose [client] (or [mariadb-backup]) group gives the user and
        /// password to log in with, and the socket when --socket is left out.
        #[arg(long, value_name = "FILE")]
        defaults_file: Option<PathBuf>,
        /// Run the preflight only: read the server, change nothing, list what would
        /// keep it from being adopted, each with its fix.
        #[arg(long)]
        check: bool,
        /// Replicate through this existing account instead of one dbfork makes
        /// (dbfork_NAME@127.0.0.1); it needs REPLICATION SLAVE and BINLOG MONITOR and
        /// must log in from 127.0.0.1.
        #[arg(long, value_name = "USER", requires = "replication_password_file")]
        replication_user: Option<String>,
        /// A file whose first line is --replication-user's password.
        #[arg(long, value_name = "FILE", requires = "replication_user")]
        replication_password_file: Option<PathBuf>,
        /// Size of the base's volume (at least twice the server's data is taken).
        #[arg(long, default_value = "2G", value_parser = size, allow_hyphen_values = true)]
        size: u64,
        /// The base's InnoDB buffer pool size.
        #[arg(long, default_value = "128M", value_parser = size, allow_hyphen_values = true)]
        buffer_pool: u64,
        /// The base's TCP port (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// What the base's datadir lives on (see `source create --volume-engine`).
        #[arg(long, value_enum, default_value = "auto")]
        volume_engine: EngineArg,
        /// How long the copy waits, in seconds, for sessions holding LOCK TABLES on the
        /// server to end before it starts (then it gives up and changes nothing).
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 300,
            conflicts_with = "take_over"
        )]
        lock_wait: u64,
        /// Take the server itself over instead: stop it (--service or --stop-command),
        /// copy its datadir into a dbfork volume, and run it from there under dbfork
        /// with its own options, port and server_id (`dbfork source release NAME`
        /// gives it back).
        #[arg(long, conflicts_with_all = ["replication_user"])]
        take_over: bool,
        /// The systemd unit that runs the server (Debian's: mariadb); stopped and
        /// started with systemctl.
        #[arg(
            long,
            value_name = "UNIT",
            requires = "take_over",
            conflicts_with = "stop_command"
        )]
        service: Option<String>,
        /// A shell command that stops the server (without --service).
        #[arg(long, value_name = "CMD", requires_all = ["take_over", "start_command"])]
        stop_command: Option<String>,
        /// A shell command that starts the server again (at a failed take-over and
        /// at the release).
        #[arg(long, value_name = "CMD", requires_all = ["take_over", "stop_command"])]
        start_command: Option<String>,
    },
    /// Give a server taken over (`source adopt --take-over`) back: stop it under
    /// dbfork, put its datadir back where it was, start it the way you run it, and
    /// remove what dbfork held.
    Release { name: String },
}

/// See `dbfork source create --volume-engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    Auto,
    Lazy,
    Reflink,
}

impl From<EngineArg> for dbfork::source::VolumeEngine {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Auto => dbfork::source::VolumeEngine::Auto,
            EngineArg::Lazy => dbfork::source::VolumeEngine::Lazy,
            EngineArg::Reflink => dbfork::source::VolumeEngine::Reflink,
        }
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep what the demo made instead of cleaning up.
    #[arg(long)]
    pub keep: bool,
    /// Size of the source's volume.
    #[arg(long, default_value = "1G", value_parser = size, allow_hyphen_values = true)]
    pub size: u64,
    /// Rows per sysbench table (4 tables).
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// Background hydration limit of the replicas in MiB/s (default: unlimited).
    #[arg(long, value_parser = rate, allow_hyphen_values = true)]
    pub rate: Option<u64>,
}

fn size(s: &str) -> Result<u64, String> {
    dbfork::units::parse_size(s)
}

fn rate(s: &str) -> Result<u64, String> {
    let mib: f64 = s
        .parse()
        .map_err(|_| format!("rate {s:?}: expected MiB/s as a number, e.g. 100"))?;
    if !(mib > 0.0 && mib.is_finite()) {
        return Err(format!("rate {s:?}: must be a positive number of MiB/s"));
    }
    Ok((mib * 1024.0 * 1024.0) as u64)
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create an empty volume.
    Create {
        name: String,
        /// Size, e.g. 10G.
        #[arg(long, value_parser = size, allow_hyphen_values = true)]
        size: u64,
    },
    /// Import a raw image as a new volume (reflinked where the filesystem can, copied otherwise).
    Import { name: String, file: PathBuf },
    /// Take an instant snapshot of a volume (also while it is exported or attached).
    Snapshot { volume: String, snapshot: String },
    /// Make an instant, writable, lazily hydrated clone of a snapshot.
    Clone {
        snapshot: String,
        new: String,
        /// Do not hydrate in the background (on-demand only).
        #[arg(long)]
        no_hydrate: bool,
        /// Background hydration limit in MiB/s.
        #[arg(long, value_parser = rate, allow_hyphen_values = true)]
        rate: Option<u64>,
        /// Hydration region size (power of two, >= 4K).
        #[arg(long, value_parser = size, allow_hyphen_values = true)]
        region_size: Option<u64>,
    },
    /// Move byte ranges to the front of a clone's hydration queue.
    Prefetch {
        name: String,
        /// File of `OFFSET LENGTH` lines (units allowed, # comments).
        #[arg(long)]
        ranges: PathBuf,
    },
    /// Size, hydration progress, fetch counts, rate, ETA, dependency.
    Status {
        name: String,
        /// Redraw a progress bar until the volume is independent (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
    },
    /// List volumes, snapshots and clones.
    List,
    /// Delete a volume or snapshot.
    Delete {
        name: String,
        /// For a snapshot with dependent clones: hydrate them fully first.
        #[arg(long)]
        wait: bool,
    },
    /// Serve a volume over NBD in the foreground (runs its hydrator too).
    Export {
        name: String,
        /// unix:PATH or tcp:HOST:PORT (TCP binds loopback unless given another address).
        #[arg(long)]
        nbd: String,
    },
    /// Export a volume and mount its filesystem on this host.
    Attach {
        name: String,
        mountpoint: PathBuf,
        /// Make a new filesystem on it first (destroys its content).
        #[arg(long, value_enum)]
        mkfs: Option<FsType>,
        /// Mount read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// Unmount and stop the export of an attached volume.
    Detach { name: String },
}
