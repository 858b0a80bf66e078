use clap::Parser;

fn main() {
    let cli = graft_bench::Cli::parse();
    std::process::exit(graft_bench::run(cli));
}
