use clap::Parser;

fn main() {
    let cli = graft_agent::cli::Cli::parse();
    graft_agent::cli::init_logging(cli.log_format);
    std::process::exit(graft_agent::cli::run(cli));
}
