//! `outpost users add|list|passwd|remove`: the appliance's local users,
//! through the admin API (the admin token is an admin). A password is
//! asked on the terminal with the echo off (twice), or read from one line
//! of stdin with `--password-stdin`; it is never an argument (arguments
//! show in `ps` and shell history).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use clap::Subcommand;
use outpost_web::login::Role;

use super::table::{ago, print_table};
use crate::api::users_types::{NewPassword, NewUser, SessionsEnded, UserOut};
use crate::client::AdminClient;

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Add a local user (prints its name).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Read the password from one line of stdin instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List local users with their open sessions.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password; the user's sessions end.
    Passwd {
        name: String,
        /// Read the password from one line of stdin instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user; its sessions end.
    Remove { name: String },
}

/// Longest line read by `--password-stdin`.
const MAX_LINE_BYTES: u64 = 4096;

/// The password of one line of `input`, without its line end. Empty is an
/// error (the API checks the rest of the policy).
pub fn password_from_line(input: impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input
        .take(MAX_LINE_BYTES)
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        bail!("no password on stdin (one line expected)");
    }
    Ok(pw.to_string())
}

/// Restores the terminal's settings when dropped.
struct EchoOff {
    saved: rustix::termios::Termios,
}

impl EchoOff {
    fn new() -> anyhow::Result<EchoOff> {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(&stdin, OptionalActions::Now, &quiet)
            .context("turning the terminal's echo off")?;
        Ok(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn prompt(text: &str) -> anyhow::Result<String> {
    let mut err = std::io::stderr();
    write!(err, "{text}").and_then(|()| err.flush())?;
    let _echo = EchoOff::new()?;
    password_from_line(std::io::stdin().lock())
}

/// The new password of `name`: from stdin (`from_stdin`), else asked twice
/// on the terminal; without a terminal, an error saying to use
/// `--password-stdin`.
fn new_password(name: &str, from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        return password_from_line(std::io::stdin().lock());
    }
    if !std::io::stdin().is_terminal() {
        bail!("stdin is not a terminal: pass --password-stdin to read the password from it");
    }
    let first = prompt(&format!("New password for {name}: "))?;
    let again = prompt("Again: ")?;
    if first != again {
        bail!("the two passwords differ; nothing changed");
    }
    Ok(first)
}

fn print_users(users: &[UserOut]) {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.to_string(),
                u.sessions.to_string(),
                ago(u.created_ms),
                ago(u.password_changed_ms),
            ]
        })
        .collect();
    print_table(
        &["NAME", "ROLE", "SESSIONS", "CREATED", "PASSWORD CHANGED"],
        &rows,
    );
}

/// Runs one `outpost users` command.
pub async fn run(cmd: UsersCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = new_password(&name, password_stdin)?;
            let u: UserOut = c
                .post(
                    "/api/v1/users",
                    &NewUser {
                        name: name.clone(),
                        role,
                        password,
                    },
                )
                .await
                .with_context(|| format!("adding user {name}"))?;
            println!("{}", u.name);
        }
        UsersCmd::List { json } => {
            if json {
                println!(
                    "{}",
                    String::from_utf8_lossy(&c.get_raw("/api/v1/users").await?)
                );
            } else {
                print_users(&c.get::<Vec<UserOut>>("/api/v1/users").await?);
            }
        }
        UsersCmd::Passwd {
            name,
            password_stdin,
        } => {
            let password = new_password(&name, password_stdin)?;
            let body = serde_json::to_vec(&NewPassword {
                password,
                current_password: None,
            })?;
            let out = c
                .request("PUT", &format!("/api/v1/users/{name}/password"), Some(body))
                .await
                .with_context(|| format!("changing the password of {name}"))?;
            let ended: SessionsEnded = serde_json::from_slice(&out)?;
            println!(
                "password of {} changed; {} session(s) ended",
                ended.user, ended.sessions_ended
            );
        }
        UsersCmd::Remove { name } => {
            let out = c
                .request("DELETE", &format!("/api/v1/users/{name}"), None)
                .await
                .with_context(|| format!("removing user {name}"))?;
            let ended: SessionsEnded = serde_json::from_slice(&out)?;
            println!(
                "removed {}; {} session(s) ended",
                ended.user, ended.sessions_ended
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_from_stdin_is_one_line_without_its_line_end() {
        assert_eq!(
            password_from_line(&b"s3cret pass\nsecond line\n"[..]).unwrap(),
            "s3cret pass"
        );
        assert_eq!(
            password_from_line(&b"crlf-pass\r\n"[..]).unwrap(),
            "crlf-pass"
        );
        assert_eq!(
            password_from_line(&b"no-newline"[..]).unwrap(),
            "no-newline"
        );
        assert!(password_from_line(&b"\n"[..]).is_err());
        assert!(password_from_line(&b""[..]).is_err());
    }
}
