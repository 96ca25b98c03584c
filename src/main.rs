//! `switchboard`: the server binary. CLI -> config -> telemetry -> app.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use switchboard::config::{Config, Overrides};
use switchboard::service::deployment;
use switchboard::service::store::{KeyKind, Store};

/// Exit code for invalid configuration or usage (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted communications server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: identity API, signaling, SFU, web SDK and calling page.
    Serve(Box<ServeArgs>),
    /// Show or rotate the deployment's access keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Config file (TOML); default ./switchboard.toml when present.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: SQLite store, TLS certificate, connection string. [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTPS and WSS port, all interfaces. [default: 8443]
    #[arg(long)]
    https_port: Option<u16>,
    /// Plain HTTP port, 127.0.0.1 only. [default: 8080]
    #[arg(long)]
    http_port: Option<u16>,
    /// Media UDP port (WebRTC) of media worker 0; worker i uses port + i; 0: free ports. [default: 10000]
    #[arg(long)]
    media_port: Option<u16>,
    /// Media worker threads, each with its own UDP port and rooms; 0: one per core. [default: 0]
    #[arg(long)]
    media_workers: Option<usize>,
    /// Host name clients use (connection string, certificate).
    #[arg(long)]
    public_host: Option<String>,
    /// Public IP of a 1:1 NAT, advertised as the media candidate.
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// PEM certificate chain (with --tls-key) instead of the self-signed one.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Seconds an unanswered call rings before ending with 408. [default: 60]
    #[arg(long)]
    ring_timeout: Option<u64>,
    /// Open the demo sign-in (/demo) to every client, not only loopback ones.
    #[arg(long)]
    demo: bool,
    /// Log filter, tracing EnvFilter syntax (RUST_LOG overrides it). [default: info]
    #[arg(long)]
    log: Option<String>,
    /// Log format: text or json. [default: text]
    #[arg(long)]
    log_format: Option<String>,
    /// SIP port, UDP and TCP (the gateway runs when [[sip.trunks]] or [[sip.numbers]] are configured). [default: 5060]
    #[arg(long)]
    sip_port: Option<u16>,
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Print the connection string.
    Show {
        /// Data directory. [default: ./data]
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Which key to put in the connection string.
        #[arg(long, value_enum, default_value_t = Which::Primary)]
        key: Which,
    },
    /// Replace an access key with a new random one and print the new connection string.
    Rotate {
        /// Data directory. [default: ./data]
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Which key to replace.
        #[arg(long, value_enum, default_value_t = Which::Primary)]
        key: Which,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Which {
    Primary,
    Secondary,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EX_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Keys { action } => keys(action),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let flags = Overrides {
        data_dir: args.data_dir,
        https_port: args.https_port,
        http_port: args.http_port,
        media_port: args.media_port,
        media_workers: args.media_workers,
        public_host: args.public_host,
        public_ip: args.public_ip,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        ring_timeout: args.ring_timeout,
        demo: args.demo.then_some(true),
        log: args.log,
        log_format: args.log_format,
        sip: args
            .sip_port
            .map(|p| switchboard::config::SipOverrides { port: Some(p) }),
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = match Config::load(args.config.as_deref(), &env, &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_tracing(&config);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(switchboard::app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn keys(action: KeysAction) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let (data_dir, which, rotate) = match action {
            KeysAction::Show { data_dir, key } => (data_dir, key, false),
            KeysAction::Rotate { data_dir, key } => (data_dir, key, true),
        };
        if !data_dir.join("switchboard.db").exists() {
            anyhow::bail!(
                "no deployment in {}: run `switchboard serve --data-dir {}` once",
                data_dir.display(),
                data_dir.display()
            );
        }
        let env: Vec<(String, String)> = std::env::vars().collect();
        let config = Config::load(
            None,
            &env,
            &Overrides {
                data_dir: Some(data_dir.clone()),
                ..Default::default()
            },
        )?;
        let store = Store::open(&data_dir).await?;
        let kind = match which {
            Which::Primary => KeyKind::Primary,
            Which::Secondary => KeyKind::Secondary,
        };
        let dep = if rotate {
            deployment::rotate_key(&store, kind).await?
        } else {
            store
                .deployment()
                .await?
                .ok_or(deployment::DeploymentError::NotInitialised)?
        };
        let key = match kind {
            KeyKind::Primary => &dep.primary_key,
            KeyKind::Secondary => &dep.secondary_key,
        };
        // Keep the endpoint the server wrote (it knows its real port and host); only the key changes.
        let written = std::fs::read_to_string(deployment::connection_string_path(&data_dir)).ok();
        let cs = match written
            .as_deref()
            .and_then(|s| s.trim().split(";accesskey=").next())
        {
            Some(endpoint) if endpoint.starts_with("endpoint=") => {
                format!("{endpoint};accesskey={key}")
            }
            _ => deployment::connection_string(&config.endpoint_host(), config.https_port, key),
        };
        if rotate && matches!(kind, KeyKind::Primary) {
            deployment::write_connection_string(&data_dir, &cs)?;
        }
        store.close().await;
        println!("{cs}");
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::from(EX_USAGE)
        }
    }
}
