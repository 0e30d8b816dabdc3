//! `dbfork source adopt`: the preflight's report, and the adoption with its progress
//! (the copy in bytes of the estimate, rate and ETA; the catch-up in transactions).

use super::output::Output;
use anyhow::Result;
use dbfork::adopt::{Account, AdoptProgress};
use dbfork::ctx::Ctx;
use dbfork::source::SourceOptions;
use dbfork::units::human;
use dbinstance::external::ExternalServer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub fn adopt(
    ctx: &Ctx,
    out: &Output,
    name: &str,
    server: &ExternalServer,
    account: &Account,
    opts: &SourceOptions,
    lock_wait: std::time::Duration,
) -> Result<()> {
    let shown = Shown::new(out.json)?;
    let rec = dbfork::adopt::adopt(ctx, name, server, account, opts, lock_wait, &shown)?;
    shown.finish();
    let u = rec
        .upstream
        .as_ref()
        .expect("an adopted source has its upstream");
    out.done(
        &format!(
            "adopted the server at {} as {name}: base running on port {} (socket {}), \
             copied at gtid {} and replicating from {}:{} as {}; fork it with `dbfork clone \
             {name} NEW`",
            u.socket.display(),
            rec.config.port,
            rec.config.socket_path().display(),
            u.adopted_at_text(),
            u.host,
            u.port,
            u.account
        ),
        serde_json::to_value(&rec)?,
    );
    Ok(())
}

/// What a preflight found, for people or scripts.
struct Preflight<'a> {
    name: &'a str,
    server: &'a ExternalServer,
    facts: &'a dbinstance::external::ServerFacts,
    /// "adoption" or "take-over".
    mode: &'a str,
    /// What would be copied: the InnoDB data (online) or the datadir (take-over).
    bytes: u64,
    refusals: Vec<String>,
    notes: Vec<String>,
}

impl Preflight<'_> {
    fn report(self, out: &Output) -> Result<()> {
        let f = self.facts;
        if out.json {
            outln!(
                "{}",
                serde_json::json!({
                    "name": self.name,
                    "mode": self.mode,
                    "socket": self.server.socket(),
                    "version": f.version,
                    "server_id": f.server_id,
                    "port": f.port,
                    "datadir": f.datadir,
                    "log_bin": f.log_bin,
                    "session_user": f.session_user,
                    "bytes": self.bytes,
                    "refusals": self.refusals,
                    "notes": self.notes,
                })
            );
        } else {
            for n in &self.notes {
                outln!("note: {n}");
            }
        }
        if !self.refusals.is_empty() {
            return Err(dbfork::error::Error::AdoptRefused {
                name: self.name.into(),
                socket: self.server.socket().to_path_buf(),
                refusals: self.refusals,
            }
            .into());
        }
        if !out.json {
            outln!(
                "the server at {} ({}, server_id {}, datadir {}, {} to copy) passes the \
                 preflight for {} as {}",
                self.server.socket().display(),
                f.version,
                f.server_id,
                f.datadir.display(),
                human(self.bytes),
                self.mode,
                self.name
            );
        }
        Ok(())
    }
}

pub fn check(
    ctx: &Ctx,
    out: &Output,
    name: &str,
    server: &ExternalServer,
    account: &Account,
) -> Result<()> {
    let (facts, refusals) =
        dbfork::adopt::preflight(ctx, server, account, dbfork::adopt::Mode::Online)?;
    Preflight {
        name,
        server,
        facts: &facts,
        mode: "adoption",
        bytes: facts.data_bytes,
        refusals,
        notes: Vec::new(),
    }
    .report(out)
}

pub fn check_take_over(ctx: &Ctx, out: &Output, name: &str, server: &ExternalServer) -> Result<()> {
    let c = dbfork::takeover::check(ctx, server)?;
    Preflight {
        name,
        server,
        facts: &c.facts,
        mode: "take-over",
        bytes: c.datadir_bytes,
        refusals: c.refusals,
        notes: c.notes,
    }
    .report(out)
}

pub fn take_over(
    ctx: &Ctx,
    out: &Output,
    name: &str,
    server: &ExternalServer,
    control: &dbfork::registry::ServerControl,
    opts: &SourceOptions,
) -> Result<()> {
    let shown = Shown::new(out.json)?;
    let (rec, notes) = dbfork::takeover::take_over(ctx, name, server, control, opts, &shown)?;
    shown.finish();
    if !out.json {
        for n in &notes {
            outln!("note: {n}");
        }
    }
    let t = rec
        .taken_over
        .as_ref()
        .expect("a taken-over source says so");
    out.done(
        &format!(
            "took over the server at {} as {name}: it runs under dbfork from volume {name} on \
             port {}{}; its datadir {} is left as it was until `dbfork source release {name}`",
            t.socket.display(),
            rec.config.port,
            if t.socket_linked {
                format!(
                    " (socket {} links to {})",
                    t.socket.display(),
                    rec.config.socket_path().display()
                )
            } else {
                format!(" (socket {})", rec.config.socket_path().display())
            },
            t.datadir.display()
        ),
        serde_json::to_value(&rec)?,
    );
    Ok(())
}

pub fn release(ctx: &Ctx, out: &Output, name: &str) -> Result<()> {
    let shown = Shown::new(out.json)?;
    let say = |s: &str| {
        if !out.json {
            outln!("{s}");
        }
    };
    let datadir = dbfork::takeover::release(ctx, name, &shown, &say)?;
    shown.finish();
    if out.json {
        out.print_json(&serde_json::json!({ "released": name, "datadir": datadir }));
    }
    Ok(())
}

/// The adoption's steps and bars on the terminal (nothing with --json or without a
/// terminal).
struct Shown {
    json: bool,
    bar: RefCell<Option<ProgressBar>>,
    /// Set by SIGINT, SIGTERM or SIGHUP: the work stops where it can and takes back
    /// what it made, instead of dying halfway (an operator's server left stopped).
    stop: Arc<AtomicBool>,
}

impl Shown {
    fn new(json: bool) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal_hook::flag::register(sig, stop.clone())?;
        }
        Ok(Shown {
            json,
            bar: RefCell::new(None),
            stop,
        })
    }

    fn new_bar(&self, len: u64, template: &str) -> ProgressBar {
        let bar = ProgressBar::new(len);
        if self.json {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("static template")
                .progress_chars("=> "),
        );
        if let Some(old) = self.bar.borrow_mut().replace(bar.clone()) {
            old.finish();
        }
        bar
    }

    fn finish(&self) {
        if let Some(b) = self.bar.borrow_mut().take() {
            b.finish();
        }
    }
}

impl AdoptProgress for Shown {
    fn step(&self, what: &str) {
        self.finish();
        tracing::info!("adopt: {what}");
    }
    fn copy_started(&self, estimate: u64) {
        self.new_bar(
            estimate.max(1),
            "copy  [{bar:30}] {bytes}/{total_bytes} at {binary_bytes_per_sec}, ETA {eta} {msg}",
        );
    }
    fn copied(&self, bytes: u64) {
        if let Some(b) = &*self.bar.borrow() {
            if self.cancelled() {
                b.set_message("(stopping: what was made is taken back once this step ends)");
            }
            // The estimate is the server's table data; the stream also carries its
            // redo and system files.
            if bytes > b.length().unwrap_or(0) {
                b.set_length(bytes);
            }
            b.set_position(bytes);
        }
    }
    fn copy_done(&self, bytes: u64) {
        if let Some(b) = self.bar.borrow_mut().take() {
            b.set_length(bytes);
            b.finish_with_message("copied");
        }
        if !self.json {
            errln!("copied {} of the server's data", human(bytes));
        }
    }
    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn behind(&self, transactions: u64, of: u64) {
        if self.bar.borrow().is_none() {
            self.new_bar(of.max(1), "catch-up [{bar:30}] {pos}/{len} transactions");
        }
        if let Some(b) = &*self.bar.borrow() {
            b.set_position(of.saturating_sub(transactions));
        }
    }
}
