//! `rampart`: the agent daemon and its command-line client, in one binary.
use clap::Parser;
use rampart::{
    attach,
    cli::{Cli, Command},
    config,
    daemon::{self, AgentOptions},
};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Agent(args) => {
            if let Some(file) = &args.check_config {
                match std::fs::read_to_string(file) {
                    Ok(text) => match config::parse(&text, &file.display().to_string()) {
                        Ok(_) => {
                            println!("{}: valid", file.display());
                            0
                        }
                        Err(e) => {
                            eprintln!("{e}");
                            1
                        }
                    },
                    Err(e) => {
                        eprintln!("{}: cannot read: {e}", file.display());
                        1
                    }
                }
            } else {
                let opts = AgentOptions {
                    config_given: args.config.is_some(),
                    config: args.config.unwrap_or_else(|| config::DEFAULT_PATH.into()),
                    log_format: args.log_format.map(Into::into),
                    replace_maps: args.replace_maps,
                    metrics_listen: args.metrics_listen,
                };
                match daemon::run(opts) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("rampart agent: {e:#}");
                        1
                    }
                }
            }
        }
        Command::Detach { config: path } => match config::load_at_start(&path, false) {
            Ok((v, _)) => {
                let dir = daemon::pin_dir(&v.config.agent.bpffs);
                let n = attach::detach_all(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir(&v.config.agent.bpffs);
                println!(
                    "detached from {n} interface(s) and removed the pins under {}",
                    dir.display()
                );
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => match rt.block_on(rampart::cli::run(cli)) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("rampart: {e}");
                        1
                    }
                },
                Err(e) => {
                    eprintln!("rampart: {e}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
