//! The `artifactd` command.

use artifactd::config::Config;
use artifactd::server;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The allocator is the system's (glibc's, limited to two arenas: see [`tune_allocator`]);
/// built with `--features mimalloc`, it is mimalloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// glibc's allocator gives each thread that contends for memory an arena of its own, up to
/// eight per core, and each keeps what its threads freed. Measured with 16 clients each
/// uploading then downloading 256 MiB (release build, 2 cores): peak resident memory 531 MiB
/// with glibc's defaults, 444 MiB with four arenas, 339 MiB with two (uploads as fast,
/// downloads 483 against 546 MiB/s), and 620 MiB with mimalloc. An operator's own
/// `MALLOC_ARENA_MAX` (or an `arena_max` in `GLIBC_TUNABLES`) wins.
///
/// glibc also raises its mmap threshold each time a large block is freed (up to 32 MiB),
/// after which the buffers of packs, spans and messages come from the arenas and stay
/// there fragmented. A fixed threshold gives such buffers back when freed: at 16
/// concurrent 256 MiB uploads then downloads, 1 MiB took the peak from 287 to 245 MiB.
/// 256 KiB also covers each received message's buffer (tonic's, one a message) and the
/// chunker's: at 16 concurrent 1 GiB uploads then downloads the peak fell from 257 to
/// 189 MiB (512 MiB each: 232 to 181), uploads as fast (174 and 177 MiB/s), downloads 10%
/// slower (492 to 441 MiB/s) while download messages were up to 1 MiB: each sent
/// message's buffer was mapped and faulted in anew. Download messages now stay under
/// 248 KiB (`app/download.rs`), so those buffers come from the heap. jemalloc
/// (tikv-jemallocator 0.6) was measured too, at 16 concurrent 1 GiB uploads then
/// downloads: 369 MiB against 304 MiB for glibc with a 1 MiB threshold.
fn tune_allocator() {
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tunables.contains("arena_max") {
            // SAFETY: mallopt only changes allocator settings; it is called before any
            // thread of this process starts.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() && !tunables.contains("mmap_threshold") {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
            }
        }
    }
}

/// Gives the allocator's free pages back to the kernel every `period_ms` milliseconds
/// (`server.memory_trim_interval_ms`; 0 never). glibc returns memory on its own only from
/// the top of an arena; the buffers of many concurrent transfers are freed in no such
/// order, so an arena's middle stays resident though nothing uses it. `malloc_trim` walks
/// the free lists and lets the kernel take those pages back. Measured at 16 concurrent
/// 2 GiB uploads then downloads: peak 193.9 MiB against 196.6 without, at the same upload
/// rate (152 and 151 MiB/s); as the downloads ended, resident memory was 108-139 MiB
/// against 147-157 without.
fn start_memory_trim(period_ms: u64) {
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    {
        if period_ms == 0 {
            return;
        }
        let period = std::time::Duration::from_millis(period_ms);
        let spawned = std::thread::Builder::new()
            .name("memory-trim".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(period);
                    // SAFETY: malloc_trim only gives free memory back to the kernel, under the
                    // allocator's own locks.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the thread that gives free memory back");
        }
    }
    #[cfg(not(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu")))]
    let _ = period_ms;
}

#[derive(Debug, Parser)]
#[command(name = "artifactd", version, about = "Versioned artifact storage over gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: artifactd::cli::Connection,
}

#[derive(Debug, Subcommand)]
enum DrAction {
    /// Takes a backup of every tenant, written to both stores and verified.
    Export {
        #[arg(long, env = "ARTIFACTD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Restores the catalog and the primary store from the fallback store's backups.
    Restore {
        #[arg(long, env = "ARTIFACTD_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the service. With no configuration it keeps everything under ./artifactd-data.
    Serve {
        /// TOML configuration file; ARTIFACTD_* variables override it.
        #[arg(long, env = "ARTIFACTD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Rebuilds the search index from the catalog. Stop the server using the index first.
    Reindex {
        #[arg(long, env = "ARTIFACTD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Verifies the catalog against the stores: every version's chunks are indexed and every
    /// pack they need is on each store (primary and fallback); with --read-data every such
    /// pack is read and every chunk opened, decoded and checked against its hash. Exits 1 on
    /// damage; orphans (garbage for collection) are listed but are not damage.
    Check {
        #[arg(long, env = "ARTIFACTD_CONFIG")]
        config: Option<PathBuf>,
        /// Read and verify every byte the catalog needs.
        #[arg(long)]
        read_data: bool,
    },
    /// Runs garbage collection once: packs no version, version in the trash or upload in
    /// flight needs are marked, and deleted from every store by a later run once the grace
    /// period has passed; mostly dead packs are rewritten. One run at a time across this
    /// command and the servers (a catalog lease). Exits 1 when the run could not be made.
    Gc {
        #[arg(long, env = "ARTIFACTD_CONFIG")]
        config: Option<PathBuf>,
        /// Report what a run would do now, changing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Disaster recovery: `export` backs every tenant up now (onto both stores);
    /// `restore` rebuilds this installation (an empty catalog and primary store) from the
    /// backups and packs on the fallback store alone. Stop the servers first.
    Dr {
        #[command(subcommand)]
        action: DrAction,
    },
    /// Loads and validates the configuration, then prints it as TOML (secrets masked).
    CheckConfig {
        #[arg(long, env = "ARTIFACTD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Asks the server's gRPC health service: exit 0 when serving, 6 when not serving or not
    /// answering in time. The container image's health check.
    Health {
        /// A service, for example artifactd.v1.ArtifactService; the whole server when empty.
        #[arg(long, default_value = "")]
        service: String,
        /// Seconds to wait for the connection and the answer together.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    #[command(flatten)]
    Client(artifactd::cli::ClientCommand),
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load(config.map(PathBuf::as_path), std::env::vars())?)
}

/// Runs a client command; a failure is printed and becomes the process's exit code.
fn client(
    command: impl std::future::Future<Output = Result<(), artifactd::cli::Failure>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(command) {
        Ok(()) => Ok(()),
        Err(failure) => {
            eprintln!("artifactd: {}", failure.message);
            std::process::exit(failure.code);
        }
    }
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "artifactd", &mut std::io::stdout());
            Ok(())
        }
        Command::Client(command) => client(artifactd::cli::run(cli.connection, command)),
        Command::Health { service, timeout } => {
            let limit = std::time::Duration::from_secs(timeout.max(1));
            client(async move { artifactd::cli::health_check(&cli.connection, &service, limit).await })
        }
        Command::CheckConfig { config } => {
            let config = load(config.as_ref())?;
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }
        Command::Dr { action } => {
            let (config, export) = match action {
                DrAction::Export { config } => (config, true),
                DrAction::Restore { config } => (config, false),
            };
            let config = load(config.as_ref())?;
            artifactd::telemetry::init_logging(&config.log.format, &config.log.filter);
            let runtime = tokio::runtime::Runtime::new()?;
            if export {
                let backups = runtime.block_on(server::dr_export(config))?;
                for backup in &backups {
                    println!(
                        "backed up tenant {}: backup {} ({} artifacts, {} versions, {} objects)",
                        backup.tenant,
                        backup.id,
                        backup.summary.artifacts,
                        backup.summary.versions,
                        backup.summary.objects.len()
                    );
                }
                println!("{} tenant backup(s) taken", backups.len());
                return Ok(());
            }
            let report = runtime.block_on(server::dr_restore(config))?;
            println!(
                "found {} backups; restored {} ({} artifacts, {} versions); copied {} packs to the primary",
                report.backups_found,
                report.backups_restored,
                report.artifacts,
                report.versions,
                report.packs_copied
            );
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            if !report.problems.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Gc { config, dry_run } => {
            let config = load(config.as_ref())?;
            artifactd::telemetry::init_logging(&config.log.format, &config.log.filter);
            let report =
                tokio::runtime::Runtime::new()?.block_on(server::collect_garbage(config, dry_run))?;
            let would = if dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            };
            println!(
                "examined {} packs ({} bytes) for {} versions{would}",
                report.packs_examined, report.bytes_examined, report.versions_scanned
            );
            println!(
                "reclaimed {} packs ({} bytes); marked {}; compacted {} packs ({} bytes into {}); deleted {} objects",
                report.packs_reclaimed,
                report.bytes_reclaimed,
                report.packs_marked,
                report.packs_compacted,
                report.bytes_compacted,
                report.bytes_rewritten,
                report.objects_deleted
            );
            for kept in &report.kept {
                println!(
                    "kept {} packs ({} bytes): {}",
                    kept.packs, kept.bytes, kept.reason
                );
            }
            for problem in &report.problems {
                println!("problem (retried next run): {problem}");
            }
            Ok(())
        }
        Command::Check { config, read_data } => {
            let config = load(config.as_ref())?;
            artifactd::telemetry::init_logging(&config.log.format, &config.log.filter);
            let report = tokio::runtime::Runtime::new()?.block_on(server::check(config, read_data))?;
            println!(
                "checked {} versions, {} chunks, {} packs on {} ({} bytes read{})",
                report.versions,
                report.chunks,
                report.packs,
                report.stores.join(" and "),
                report.bytes_read,
                if read_data {
                    ""
                } else {
                    "; add --read-data to verify every byte"
                }
            );
            if report.destroyed_versions > 0 {
                println!(
                    "{} versions were destroyed with their tenant's keys, on purpose",
                    report.destroyed_versions
                );
            }
            for orphan in &report.orphans {
                println!("orphan: {orphan}");
            }
            for problem in &report.problems {
                println!("PROBLEM: {problem}");
            }
            if report.problems.is_empty() {
                println!("no problems found");
                Ok(())
            } else {
                eprintln!("artifactd: {} problems found", report.problems.len());
                std::process::exit(1);
            }
        }
        Command::Reindex { config } => {
            let config = load(config.as_ref())?;
            artifactd::telemetry::init_logging(&config.log.format, &config.log.filter);
            let written = tokio::runtime::Runtime::new()?.block_on(server::reindex(config))?;
            println!("reindexed {written} artifacts");
            Ok(())
        }
        Command::Serve { config } => {
            let config = load(config.as_ref())?;
            artifactd::telemetry::init_logging(&config.log.format, &config.log.filter);
            let metrics = artifactd::telemetry::init_metrics()?;
            start_memory_trim(config.server.memory_trim_interval_ms);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let shutdown = CancellationToken::new();
                let signal_token = shutdown.clone();
                tokio::spawn(async move {
                    server::shutdown_signal().await;
                    signal_token.cancel();
                });
                server::run(config, Some(metrics), shutdown, |addrs| {
                    // One machine-readable line on stdout for supervisors and tests.
                    let mut stdout = std::io::stdout();
                    let links = addrs
                        .links
                        .map(|links| format!(" links={links}"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        stdout,
                        "artifactd ready grpc={} http={}{links}",
                        addrs.grpc, addrs.http
                    );
                    let _ = stdout.flush();
                })
                .await
            })
        }
    }
}
