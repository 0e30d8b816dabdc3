//! `pagetabled-probe`: a line-driven client of the page table, for tests and for
//! poking a running daemon by hand. Reads one command per line on stdin, answers one
//! line on stdout:
//!
//! ```text
//! connect SOCKET | reconnect | gen
//! register SPACE PAGE OFFSET LSN [VALID_FROM]  (a LocalPool frame, 16 KiB page;
//!                                              VALID_FROM defaults to max)
//! register_in FAMILY SPACE PAGE OFFSET LSN [VALID_FROM] (names a family explicitly)
//! lookup SPACE PAGE MAX_LSN | lookup_in FAMILY SPACE PAGE MAX_LSN
//! invalidate OFFSET
//! admin ADMIN_SOCKET JSON                 (one admin request)
//! ```
//! Answers start with `ok`, `hit`, `miss` or `err`. A hit prints
//! `hit owner=N offset=N lsn=N valid_from=N|max`.

use pagetable::admin::{AdminClient, AdminRequest};
use pagetable::client::Client;
use pagetable::wire::{Reply, Request, WireRegistration};
use pagetable::{Entry, FamilyId, Frame};
use std::io::{BufRead, Write};

/// `SPACE PAGE OFFSET LSN [VALID_FROM]`; a missing VALID_FROM is "read after every
/// snapshot" (u64::MAX), so that tests about other things need not think about it.
fn reg<'a>(mut w: impl Iterator<Item = &'a str>) -> Result<WireRegistration, String> {
    let (space_id, page_no, offset, lsn) = (
        num(w.next())?,
        num(w.next())?,
        num(w.next())?,
        num(w.next())?,
    );
    let valid_from = match w.next() {
        None | Some("max") => u64::MAX,
        v => num(v)?,
    };
    Ok(WireRegistration {
        space_id,
        page_no,
        frame: Frame::LocalPool { offset },
        lsn,
        valid_from,
        page_size: 16384,
    })
}

fn show_valid_from(v: u64) -> String {
    if v == u64::MAX {
        "max".into()
    } else {
        v.to_string()
    }
}

fn show(found: Option<Entry>) -> String {
    match found {
        None => "miss".into(),
        Some(e) => {
            let off = match e.frame {
                Frame::LocalPool { offset } => offset,
                Frame::XenGfn { gfn } => gfn,
                Frame::XenGrant { gref, .. } => u64::from(gref),
            };
            format!(
                "hit owner={} offset={off} lsn={} valid_from={}",
                e.owner.0,
                e.lsn,
                show_valid_from(e.valid_from)
            )
        }
    }
}

fn num<T: std::str::FromStr>(w: Option<&str>) -> Result<T, String> {
    w.ok_or("missing argument")?
        .parse()
        .map_err(|_| "bad number".to_string())
}

fn run(client: &mut Option<Client>, line: &str) -> Result<String, String> {
    let mut w = line.split_whitespace();
    let cmd = w.next().unwrap_or("");
    if cmd == "connect" {
        let c = Client::connect(w.next().ok_or("missing socket")?).map_err(|e| e.to_string())?;
        let out = format!(
            "ok domain={} family={} gen={:016x}",
            c.domain().0,
            c.family().0,
            c.generation()
        );
        *client = Some(c);
        return Ok(out);
    }
    if cmd == "admin" {
        let path = w.next().ok_or("missing admin socket")?;
        let json = line.splitn(3, ' ').nth(2).ok_or("missing request")?;
        let req: AdminRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut a = AdminClient::connect(path).map_err(|e| e.to_string())?;
        let reply = a.call(&req).map_err(|e| e.to_string())?;
        return Ok(format!(
            "ok {}",
            serde_json::to_string(&reply).unwrap_or_default()
        ));
    }
    let c = client.as_mut().ok_or("not connected")?;
    let e = |e: pagetable::Error| e.to_string();
    match cmd {
        "reconnect" => {
            let changed = c.reconnect().map_err(e)?;
            Ok(format!("ok changed={changed} gen={:016x}", c.generation()))
        }
        "gen" => Ok(format!("ok {:016x}", c.generation())),
        "register" => {
            c.register(reg(w)?).map_err(e)?;
            Ok("ok".into())
        }
        "register_in" => {
            let family = FamilyId(num(w.next())?);
            let r = reg(w)?;
            match c
                .call(Request::Register {
                    family,
                    items: vec![r],
                })
                .map_err(e)?
            {
                Reply::Registered { count } => Ok(format!("ok {count}")),
                other => Err(format!("unexpected {other:?}")),
            }
        }
        "lookup" => {
            let (s, p, max): (u32, u32, u64) = (num(w.next())?, num(w.next())?, num(w.next())?);
            Ok(show(c.lookup(s, p, max).map_err(e)?))
        }
        "lookup_in" => {
            let family = FamilyId(num(w.next())?);
            let (s, p, max): (u32, u32, u64) = (num(w.next())?, num(w.next())?, num(w.next())?);
            match c
                .call(Request::Lookup {
                    family,
                    max_lsn: max,
                    pages: vec![(s, p)],
                })
                .map_err(e)?
            {
                Reply::Found(mut f) => Ok(show(f.pop().flatten())),
                other => Err(format!("unexpected {other:?}")),
            }
        }
        "invalidate" => {
            let removed = c
                .invalidate(Frame::LocalPool {
                    offset: num(w.next())?,
                })
                .map_err(e)?;
            Ok(format!("ok {removed}"))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn main() {
    let mut client = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let answer = run(&mut client, line.trim()).unwrap_or_else(|e| format!("err {e}"));
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}
