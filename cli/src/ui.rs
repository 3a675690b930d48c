//! `kiln ui [--host 127.0.0.1] [--port 5000]`: the run history in a browser. Beyond localhost
//! it needs `KILN_UI_TOKEN`.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use kiln_runs as runs;
use kiln_ui::UiOptions;

/// The port `kiln ui` listens on unless told otherwise; `kiln submit` prints run pages on it.
pub const DEFAULT_PORT: u16 = 5000;

/// Arguments of `kiln ui`.
#[derive(Args, Debug)]
pub struct UiArgs {
    /// The address to listen on; anything but a loopback address needs KILN_UI_TOKEN.
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host)]
    host: IpAddr,
    /// The port (0 picks a free one).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
}

/// Runs `kiln ui` until Ctrl-C.
pub fn run(args: UiArgs) -> Result<ExitCode> {
    let home = runs::kiln_home();
    // Opening the history first reports a damaged or misplaced one before the page does.
    runs::RunHistory::open_to_read(&home)?;
    let options = UiOptions {
        host: args.host,
        port: args.port,
        token: std::env::var("KILN_UI_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    kiln_ui::run(home.clone(), options, |addr| {
        println!(
            "kiln ui: http://{addr}/ over {} (Ctrl-C stops it)",
            home.display()
        );
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `--host`: an IP address, or `localhost` (127.0.0.1).
pub fn parse_host(text: &str) -> Result<IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    text.parse().map_err(|_| {
        format!("'{text}' is not an address to listen on; expected an IP address such as 127.0.0.1, 0.0.0.0 or ::1, or localhost")
    })
}

/// The address of run `id`'s page under a `kiln ui` on this machine's default port.
pub fn run_page(id: &str) -> String {
    format!("http://127.0.0.1:{DEFAULT_PORT}/#/run/{id}")
}
