//! `aha sandbox run`: runs a program in the OS sandbox and prints one JSON object (`status`,
//! `exit_code`, capped `stdout`/`stderr`, resource use). See `aha_reward::code::sandbox` for what
//! the sandbox enforces; it refuses (status `refused`) rather than run unconfined.

use aha_reward::code::sandbox::{run_python, Limits};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

/// Sandboxed execution.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(clap::Subcommand)]
enum SandboxCommand {
    /// Run FILE in the sandbox and print the result as JSON.
    Run(RunArgs),
}

/// Languages the sandbox runs.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Lang {
    Python,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Language of FILE.
    #[arg(long, value_enum, default_value = "python")]
    lang: Lang,
    /// The program.
    file: PathBuf,
    /// File fed to the program's stdin.
    #[arg(long)]
    stdin: Option<PathBuf>,
    /// Wall-clock (and CPU-time) limit in seconds.
    #[arg(long, default_value_t = 10)]
    timeout_s: u64,
    /// Address-space limit in MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u64,
}

/// Runs `aha sandbox …`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let SandboxCommand::Run(a) = args.command;
    let Lang::Python = a.lang;
    let source = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let stdin = match &a.stdin {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => Vec::new(),
    };
    let limits = Limits {
        wall: Duration::from_secs(a.timeout_s.max(1)),
        cpu_s: a.timeout_s.max(1),
        memory_bytes: a.memory_mb << 20,
        ..Limits::default()
    };
    let out = run_python(&source, &[], &stdin, &limits);
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
