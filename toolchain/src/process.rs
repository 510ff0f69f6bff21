//! Running the programs a build needs, with errors that say what was being done.

use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The program name of `cmd`, for messages.
fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Runs `cmd` to completion; its stdout goes to our stderr so that our stdout only carries
/// image paths. `what` names the step in the error ("building the libos").
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd.status().map_err(|source| Error::Spawn {
        program: program(cmd),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            what: what.to_owned(),
            status,
        })
    }
}

/// Runs `cmd` and returns its stdout, which must be UTF-8. Its stderr is passed through.
pub(crate) fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| Error::Spawn {
            program: program(cmd),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            what: what.to_owned(),
            status: out.status,
        });
    }
    String::from_utf8(out.stdout)
        .map_err(|_| Error::UnexpectedOutput(format!("{what}: output is not UTF-8")))
}
