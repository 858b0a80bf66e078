//! `crdgen`: writes (or prints, or checks) Graft's CustomResourceDefinitions.

use std::{path::PathBuf, process::ExitCode};

use graft_crds::generate;

const USAGE: &str = "\
Usage: crdgen [--out-dir DIR | --check DIR]

Generates Graft's CustomResourceDefinitions (graft.dev/v1alpha1) from the Rust types.

  (no option)      print every CRD to stdout as one multi-document YAML stream
  --out-dir DIR    write DIR/livepatch.yaml and DIR/livepatchnode.yaml
                   (e.g. crds, or charts/graft/files/crds for the Helm chart)
  --check DIR      exit 1 when the files in DIR differ from the Rust types
  -h, --help       print this help
";

enum Mode {
    Print,
    Write(PathBuf),
    Check(PathBuf),
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Mode, String> {
    let Some(first) = args.next() else {
        return Ok(Mode::Print);
    };
    let mode = match first.as_str() {
        "-h" | "--help" => return Err(String::new()),
        "--out-dir" | "--check" => {
            let dir = args
                .next()
                .ok_or_else(|| format!("{first} needs a directory"))?;
            if first == "--out-dir" {
                Mode::Write(dir.into())
            } else {
                Mode::Check(dir.into())
            }
        }
        other => return Err(format!("unknown argument {other:?}")),
    };
    match args.next() {
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
        None => Ok(mode),
    }
}

fn main() -> ExitCode {
    let mode = match parse_args(std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(message) if message.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("crdgen: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Print => {
            print!("{}", generate::render_all());
            ExitCode::SUCCESS
        }
        Mode::Write(dir) => match generate::write_all(&dir) {
            Ok(paths) => {
                for path in paths {
                    eprintln!("wrote {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("crdgen: cannot write to {}: {error}", dir.display());
                ExitCode::FAILURE
            }
        },
        Mode::Check(dir) => {
            let drift = generate::check_dir(&dir);
            if drift.is_empty() {
                eprintln!("{} is up to date", dir.display());
                return ExitCode::SUCCESS;
            }
            for d in &drift {
                eprintln!("crdgen: {d}");
            }
            eprintln!(
                "regenerate with: cargo run -p graft-crds --bin crdgen -- --out-dir {}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
