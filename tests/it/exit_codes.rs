//! Development machine (tests): the exit-code table (`src/exit.rs`) against every place that
//! restates it: each program's `--help` and the tables in README.md and docs/.

use crate::support::{CLIENT, FILTER, RELAY, REPO, SERVICE};
use qubes_borg::exit::{self, Program};
use std::process::Command;

/// Files whose exit-code tables follow `src/exit.rs`, each table under a line
/// `<!-- exit-codes: PROGRAM ... -->`.
const DOCS: &[&str] = &[
    "README.md",
    "docs/PROTOCOL.md",
    "docs/SPLIT-SSH.md",
    "docs/USAGE.md",
];

fn binary(p: Program) -> &'static str {
    match p {
        Program::SshClient => CLIENT,
        Program::SshService => SERVICE,
        Program::AgentFilter => FILTER,
        Program::Relay => RELAY,
        Program::BackupJob => env!("CARGO_BIN_EXE_qubes-borg-job"),
        Program::QvmBackupBorg => env!("CARGO_BIN_EXE_qvm-backup-borg"),
    }
}

/// The (code, meaning) rows of every table marked for `program` in `DOCS`, backticks removed.
fn doc_tables(program: &str) -> Vec<(String, Vec<(String, String)>)> {
    let marker = format!("<!-- exit-codes: {program} ");
    let mut found = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(format!("{REPO}/{doc}")).unwrap();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with(&marker) {
                continue;
            }
            while lines.peek().is_some_and(|l| !l.starts_with('|')) {
                lines.next();
            }
            let rows: Vec<(String, String)> = lines
                .by_ref()
                .take_while(|l| l.starts_with('|'))
                .skip(2) // header and separator
                .map(|l| {
                    let cells: Vec<String> = l
                        .trim_matches('|')
                        .split(" | ")
                        .map(|c| c.trim().replace('`', ""))
                        .collect();
                    assert_eq!(cells.len(), 2, "{doc}: not a two-column row: {l}");
                    (cells[0].clone(), cells[1].clone())
                })
                .collect();
            found.push((doc.to_string(), rows));
        }
    }
    found
}

#[test]
fn doc_tables_list_exactly_the_rows_of_src_exit() {
    for p in Program::ALL {
        let want: Vec<(String, String)> = exit::rows(p)
            .map(|r| (r.code.to_string(), r.meaning.to_string()))
            .collect();
        let tables = doc_tables(p.name());
        assert_eq!(tables.len(), 1, "{}: one table in {DOCS:?}", p.name());
        for (doc, rows) in tables {
            assert_eq!(rows, want, "{doc}: the {} table", p.name());
        }
    }
}

#[test]
fn every_help_text_ends_with_its_rows_of_src_exit() {
    for p in Program::ALL {
        let out = Command::new(binary(p)).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{} --help", p.name());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.ends_with(&exit::help(p)),
            "{} --help does not end with the table of src/exit.rs:\n{help}",
            p.name()
        );
    }
}
