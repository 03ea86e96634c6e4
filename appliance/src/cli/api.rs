//! `outpost api METHOD PATH [--body JSON|@FILE]`: any admin API call. A
//! JSON answer is pretty-printed when stdout is a terminal and printed on
//! one line otherwise (for `jq`, scripts and logs); other answers as they
//! came. Every non-empty answer ends with exactly one newline.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use clap::Args;

use crate::client::AdminClient;

// No doc comment: clap would take it as the sub-command's help, which the
// `Command::Api` variant gives.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// GET, POST, PUT or DELETE.
    pub method: String,
    /// Path under the API, e.g. /api/v1/alerts.
    pub path: String,
    /// JSON body, or @FILE to read it from a file. (Not `--data`: that
    /// global flag names the data directory.)
    #[arg(long, short = 'b', value_name = "JSON|@FILE")]
    pub body: Option<String>,
}

/// The request body `--body` names: the text itself, or the contents of
/// the file after `@`. A file that cannot be read is an error naming it.
pub fn read_body(arg: &str) -> anyhow::Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some(file) => std::fs::read(Path::new(file))
            .with_context(|| format!("reading the request body from {file} (--body @{file})")),
        None => Ok(arg.as_bytes().to_vec()),
    }
}

/// What `outpost api` prints for an answer: JSON pretty-printed (`pretty`)
/// or on one line; anything else unchanged. A non-empty result ends with
/// one newline; an empty answer (204) prints nothing.
pub fn format_answer(answer: &[u8], pretty: bool) -> String {
    if answer.iter().all(u8::is_ascii_whitespace) {
        return String::new();
    }
    let mut out = match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(v) if pretty => serde_json::to_string_pretty(&v),
        Ok(v) => serde_json::to_string(&v),
        Err(_) => Ok(String::from_utf8_lossy(answer).into_owned()),
    }
    .unwrap_or_else(|_| String::from_utf8_lossy(answer).into_owned());
    let trimmed = out.trim_end_matches(['\n', '\r']).len();
    out.truncate(trimmed);
    out.push('\n');
    out
}

/// Runs `outpost api`. The body file is read before the admin API is
/// located (`client`), so a missing file is the error reported first.
pub async fn run(
    args: ApiArgs,
    client: impl FnOnce() -> anyhow::Result<AdminClient>,
) -> anyhow::Result<()> {
    let ApiArgs { method, path, body } = args;
    let body = body.as_deref().map(read_body).transpose()?;
    let out = client()?
        .request(&method.to_uppercase(), &path, body)
        .await?;
    let text = format_answer(&out, std::io::stdout().is_terminal());
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the answer to stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_are_pretty_on_a_terminal_and_one_line_otherwise() {
        let answer = br#"{"id":"ops","steps":[1,2]}"#;
        assert_eq!(
            format_answer(answer, false),
            "{\"id\":\"ops\",\"steps\":[1,2]}\n"
        );
        let pretty = format_answer(answer, true);
        assert_eq!(
            pretty,
            "{\n  \"id\": \"ops\",\n  \"steps\": [\n    1,\n    2\n  ]\n}\n"
        );
        // A pretty-printed answer from the API still comes out on one line.
        assert_eq!(format_answer(b"{\n  \"a\": 1\n}\n", false), "{\"a\":1}\n");
    }

    #[test]
    fn other_answers_print_as_they_came_with_one_trailing_newline() {
        assert_eq!(format_answer(b"ok", false), "ok\n");
        assert_eq!(format_answer(b"ok\n", true), "ok\n");
        assert_eq!(format_answer(b"# HELP x\nx 1\n", false), "# HELP x\nx 1\n");
        assert_eq!(format_answer(b"", true), "");
    }

    #[test]
    fn body_from_a_file_and_a_missing_file_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("channel.json");
        std::fs::write(&f, br#"{"id":"ops"}"#).unwrap();
        assert_eq!(
            read_body(&format!("@{}", f.display())).unwrap(),
            br#"{"id":"ops"}"#
        );
        assert_eq!(read_body(r#"{"a":1}"#).unwrap(), br#"{"a":1}"#);
        let missing = dir.path().join("nope.json");
        let err = format!(
            "{:#}",
            read_body(&format!("@{}", missing.display())).unwrap_err()
        );
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
