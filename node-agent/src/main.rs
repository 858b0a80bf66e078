use clap::Parser;

fn main() {
    let cli = graft_agent::cli::Cli::parse();
    let level = if cli.command.is_daemon() {
        "info"
    } else {
        "warn"
    };
    graft_agent::cli::init_logging_at(cli.log_format, level);
    std::process::exit(graft_agent::cli::run(cli));
}
