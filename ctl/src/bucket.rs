//! drctl at a site where no drd runs: a stream's log read straight from
//! its bucket (`wal-fetch --from`, `verify --from`, `ls --from`), and the
//! keys for client-side encryption (`keys init`). Credentials come from the
//! environment the way each cloud's own tools take them (AWS_*, AZURE_*,
//! GOOGLE_*); the identity file is the secret key that stays offline until
//! a restore.

use crate::{print_json, progress, time};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use drd_bucket::{Archive, Bucket, Opener, RetryPolicy};
use drd_client::display::bytes;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// PostgreSQL treats a restore_command exit status above 125 as fatal and
/// stops recovery: used for a damaged object, a wrong key, a gap in the
/// middle of the log or an unreachable store — anything but "this file is
/// not there", which ends recovery (or makes a standby wait) on purpose.
pub const EXIT_FATAL: u8 = 126;

/// Where to read from.
#[derive(Args, Clone, Debug, Default)]
pub struct FromArgs {
    /// Read from this bucket instead of the local drd (s3://BUCKET/PREFIX,
    /// az://CONTAINER/PREFIX, gs://BUCKET/PREFIX, file:///DIR): the target
    /// URL of the stream's `[[stream.target]]`.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// An S3-compatible endpoint (or an emulator's) instead of the cloud's own.
    #[arg(long, requires = "from")]
    pub endpoint: Option<String>,
    /// The age identity file (`drctl keys init`) that decrypts the objects.
    #[arg(long, value_name = "FILE", requires = "from")]
    pub identity: Option<PathBuf>,
}

impl FromArgs {
    fn open(&self) -> anyhow::Result<(Archive, Opener)> {
        let url = self.from.as_deref().context("--from URL is needed")?;
        let opener = match &self.identity {
            Some(p) => Opener::from_file(p)?,
            None => Opener::none(),
        };
        let bucket = Bucket::open(url, self.endpoint.as_deref(), RetryPolicy::default())?;
        Ok((Archive::new(bucket, "", ""), opener))
    }
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub from: FromArgs,
    /// Start after this segment name (the last one of the previous page).
    #[arg(long)]
    pub after: Option<String>,
    /// Objects per page.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// List the partial uploads of growing segments too.
    #[arg(long)]
    pub partials: bool,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create an age identity for a target: writes the secret key to FILE
    /// (mode 0600; keep it offline, e.g. in the hospital's vault) and prints
    /// the public recipient to put in `recipients = [...]`.
    Init(KeysInitArgs),
}

#[derive(Args)]
pub struct KeysInitArgs {
    /// Where to write the identity (secret key).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print JSON ({"identity_file", "recipient"}).
    #[arg(long)]
    pub json: bool,
}

pub fn keys(c: &KeysCmd) -> anyhow::Result<ExitCode> {
    let KeysCmd::Init(a) = c;
    let (secret, recipient) = drd_bucket::crypto::generate();
    let mut opts = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .write(true)
        .create_new(true)
        .open(&a.out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing identity is never overwritten: choose another \
                 file)",
                a.out.display()
            )
        })?;
    let created = time(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    );
    writeln!(f, "# created: {created} by drctl keys init")?;
    writeln!(f, "# public key: {recipient}")?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    if a.json {
        print_json(&json!({"identity_file": a.out, "recipient": recipient}))?;
    } else {
        println!("{recipient}");
        eprintln!(
            "drctl: identity written to {} — keep it off the database hosts; put the line above \
             in the target's `recipients`",
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `drctl wal-fetch --from URL NAME DEST`.
pub async fn wal_fetch(from: &FromArgs, name: &str, dest: &Path) -> ExitCode {
    match fetch(from, name, dest).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "drctl: wal-fetch {name} from {}: {e:#}",
                from.from.as_deref().unwrap_or("")
            );
            ExitCode::from(EXIT_FATAL)
        }
    }
}

async fn fetch(from: &FromArgs, name: &str, dest: &Path) -> anyhow::Result<ExitCode> {
    if name.contains('/') || name.starts_with('.') || name.is_empty() {
        bail!("{name:?} is not a WAL file name");
    }
    let (archive, opener) = from.open()?;
    let side =
        name.ends_with(".history") || name.ends_with(".backup") || name.ends_with(".partial");
    if side {
        let key = drd_bucket::archive::side_key(name);
        return match archive.read_object(&opener, &key).await? {
            Some((_, bytes)) => {
                write_atomically(dest, &bytes, 0)?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("drctl: {name} is not in {}", archive.bucket.url());
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let Some(r) = archive.fetch(&opener, name).await? else {
        if let Some((before, after)) = gap_around(&archive, name).await? {
            bail!(
                "{name} is missing from the bucket, but {before} before it and {after} after it \
                 are there: the archive has a gap (run `drctl verify --from`); recovery stops \
                 here rather than skip it"
            );
        }
        eprintln!("drctl: {name} is not in {}", archive.bucket.url());
        return Ok(ExitCode::FAILURE);
    };
    let pad_to = if r.complete {
        0
    } else {
        let seg = drd_core::pg::header::parse(&r.bytes).map(|h| u64::from(h.seg_size));
        match seg {
            Ok(s) if s > r.bytes.len() as u64 => {
                eprintln!(
                    "drctl: {name} was still growing when the shipping stopped: its {} bytes \
                     from {} partial uploads, zero-filled to {s} bytes (replay ends at the first \
                     zero)",
                    r.bytes.len(),
                    r.objects
                );
                s
            }
            _ => {
                eprintln!(
                    "drctl: {name}: {} bytes from {} partial uploads (the segment was still growing)",
                    r.bytes.len(),
                    r.objects
                );
                0
            }
        }
    };
    write_atomically(dest, &r.bytes, pad_to)?;
    Ok(ExitCode::SUCCESS)
}

/// For a PostgreSQL segment name that is not in the bucket: the segments of
/// its timeline just before and after it, when both exist (a gap).
async fn gap_around(archive: &Archive, name: &str) -> anyhow::Result<Option<(String, String)>> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let tli = &name[..8];
    let next = archive
        .bucket
        .list("seg/", Some(&format!("seg/{name}")), 1)
        .await?;
    let Some(after) = next
        .first()
        .map(|l| l.key.trim_start_matches("seg/").to_string())
    else {
        return Ok(None);
    };
    if !after.starts_with(tli) {
        return Ok(None);
    }
    let first = archive
        .bucket
        .list("seg/", Some(&format!("seg/{tli}")), 1)
        .await?;
    match first
        .first()
        .map(|l| l.key.trim_start_matches("seg/").to_string())
    {
        Some(before) if before.as_str() < name && before.starts_with(tli) => {
            Ok(Some((before, after)))
        }
        _ => Ok(None),
    }
}

/// Writes `bytes` (zero-filled to `pad_to`) to `dest` as restore_command
/// must (see [`crate::fetch::write_restored`]).
fn write_atomically(dest: &Path, bytes: &[u8], pad_to: u64) -> anyhow::Result<()> {
    crate::fetch::write_restored(dest, |out| {
        out.write_all(bytes)?;
        crate::fetch::zero_fill(out, pad_to.saturating_sub(bytes.len() as u64))
    })
}

/// `drctl verify --from URL [--identity FILE]`: exit 0 when every object is
/// intact and the chain holds, 1 naming the first bad one, 2 when the
/// bucket cannot be read.
pub async fn verify(
    from: &FromArgs,
    json_out: bool,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    let (archive, opener) = from.open()?;
    let show = progress::wanted(json_out, no_progress);
    let bar = show.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b.set_message("verify: listing");
        b
    });
    let report = drd_bucket::verify::verify(&archive, &opener, |n, b| {
        if let Some(bar) = &bar {
            bar.set_message(format!("verify: {n} segments, {}", bytes(b)));
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("drctl: verify --from {}: {e}", archive.bucket.url());
            return Ok(ExitCode::from(2));
        }
    };
    if json_out {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        println!(
            "{}: {} segments, {} ({} .. {})",
            archive.bucket.url(),
            report.segments,
            bytes(report.bytes),
            report.first.as_deref().unwrap_or("-"),
            report.last.as_deref().unwrap_or("-")
        );
        println!(
            "chain head: {}",
            report.chain_head.as_deref().unwrap_or("-")
        );
        if !report.plaintext_checked {
            println!(
                "note: no --identity given: objects were checked intact and the chain walked, \
                 but not decrypted and re-hashed"
            );
        }
        for f in &report.findings {
            println!("BAD  {}: {}", f.key, f.problem);
        }
        if report.ok() {
            println!("ok: every object is intact and the hash chain holds");
        } else {
            println!(
                "{} problem(s); the first bad object is {}",
                report.findings.len(),
                report.findings[0].key
            );
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `drctl ls --from URL`: one page of the bucket's segments.
pub async fn ls(a: &LsArgs) -> anyhow::Result<ExitCode> {
    let (archive, _) = a.from.open()?;
    let after = a.after.as_ref().map(|n| format!("seg/{n}"));
    let mut rows = archive
        .bucket
        .list("seg/", after.as_deref(), a.limit.max(1))
        .await?;
    if a.partials {
        let after = a.after.as_ref().map(|n| format!("part/{n}"));
        rows.extend(
            archive
                .bucket
                .list("part/", after.as_deref(), a.limit.max(1))
                .await?,
        );
    }
    let next = (rows.len() >= a.limit.max(1))
        .then(|| {
            rows.last()
                .map(|l| l.key.trim_start_matches("seg/").to_string())
        })
        .flatten();
    if a.json {
        let objects: Vec<_> = rows
            .iter()
            .map(|l| json!({"key": l.key, "size": l.size, "modified_ms": l.modified_ms}))
            .collect();
        print_json(&json!({"url": archive.bucket.url(), "objects": objects, "next_after": next}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<56} {:>12}  MODIFIED", "OBJECT", "SIZE");
    for l in &rows {
        println!(
            "{:<56} {:>12}  {}",
            l.key,
            bytes(l.size),
            time(u64::try_from(l.modified_ms).unwrap_or(0))
        );
    }
    if rows.is_empty() {
        println!("(no objects)");
    }
    if let Some(n) = next {
        println!("more: drctl ls --from {} --after {n}", archive.bucket.url());
    }
    Ok(ExitCode::SUCCESS)
}
