//! Benchmark result records for virtio-sdk.
//!
//! A benchmark program collects [`Record`]s in a [`Report`], prints them with
//! [`Report::print_table`] and writes them with [`Report::write`] to
//! `target/bench/<name>.json`. `cargo xtask bench <name>` runs the program, reads the file
//! back with [`Report::read`] and prints the same comparison table.
//!
//! The file is a JSON array of flat objects, exactly these five keys each:
//!
//! ```json
//! [
//!   {"case": "split/64", "impl": "virtio-sdk", "metric": "ns/op", "value": 41.5, "better": "lower"},
//!   {"case": "split/64", "impl": "virtio-queue", "metric": "ns/op", "value": 55.0, "better": "lower"}
//! ]
//! ```
//!
//! The table shows, for every `(case, metric)`, each implementation's value and the ratio
//! of ours (`impl == "virtio-sdk"`, see [`OURS`]) to it, saying which one is better.
//!
//! ```no_run
//! use bench_report::{Better, Report};
//!
//! let mut report = Report::new("ring");
//! report.record("split/64", "virtio-sdk", "ns/op", 41.5, Better::Lower);
//! report.record("split/64", "virtio-queue", "ns/op", 55.0, Better::Lower);
//! report.print_table();
//! let path = report.write()?;
//! println!("wrote {}", path.display());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The `impl` name of this project's implementation; other impls are compared to it.
pub const OURS: &str = "virtio-sdk";

/// Which direction of a metric is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Better {
    /// Smaller values are better (time, instructions, bytes).
    Lower,
    /// Larger values are better (throughput, operations per second).
    Higher,
}

impl Better {
    /// The JSON spelling: `"lower"` or `"higher"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }

    /// Parses the JSON spelling; anything but `"lower"` or `"higher"` is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lower" => Some(Better::Lower),
            "higher" => Some(Better::Higher),
            _ => None,
        }
    }
}

impl fmt::Display for Better {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measurement: implementation `impl_` scored `value` on `metric` in `case`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// What was measured, e.g. `"split/64"` (queue size 64).
    pub case: String,
    /// Whose implementation, e.g. [`OURS`] or `"virtio-queue"` (JSON key `impl`).
    pub impl_: String,
    /// Unit or name of the number, e.g. `"ns/op"`.
    pub metric: String,
    /// The measured value; must be finite.
    pub value: f64,
    /// Which direction is an improvement.
    pub better: Better,
}

/// The records of one benchmark program, named like the program (`ring`, `net`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    name: String,
    records: Vec<Record>,
}

impl Report {
    /// An empty report called `name` (the file becomes `target/bench/<name>.json`).
    pub fn new(name: impl Into<String>) -> Self {
        Report {
            name: name.into(),
            records: Vec::new(),
        }
    }

    /// A report called `name` holding `records`.
    pub fn from_records(name: impl Into<String>, records: Vec<Record>) -> Self {
        Report {
            name: name.into(),
            records,
        }
    }

    /// The report's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The records, in the order they were added.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Adds one measurement.
    pub fn record(
        &mut self,
        case: &str,
        impl_: &str,
        metric: &str,
        value: f64,
        better: Better,
    ) -> &mut Self {
        self.records.push(Record {
            case: case.to_owned(),
            impl_: impl_.to_owned(),
            metric: metric.to_owned(),
            value,
            better,
        });
        self
    }

    /// Checks that the report can be written and compared: a file-name-safe name, at
    /// least one record, non-empty strings, finite values, no duplicate
    /// `(case, impl, metric)`, and one `better` direction per `(case, metric)`.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.records.is_empty() {
            return Err(format!("report `{}` has no records", self.name));
        }
        let mut seen = HashSet::new();
        let mut direction: HashMap<(&str, &str), Better> = HashMap::new();
        for (i, r) in self.records.iter().enumerate() {
            if r.case.is_empty() || r.impl_.is_empty() || r.metric.is_empty() {
                return Err(format!(
                    "record {i}: case, impl and metric must be non-empty"
                ));
            }
            if !r.value.is_finite() {
                return Err(format!("record {i}: value {} is not finite", r.value));
            }
            if !seen.insert((r.case.as_str(), r.impl_.as_str(), r.metric.as_str())) {
                return Err(format!(
                    "record {i}: duplicate (case {:?}, impl {:?}, metric {:?})",
                    r.case, r.impl_, r.metric
                ));
            }
            let d = *direction
                .entry((r.case.as_str(), r.metric.as_str()))
                .or_insert(r.better);
            if d != r.better {
                return Err(format!(
                    "record {i}: (case {:?}, metric {:?}) is both \"lower\" and \"higher\" is better",
                    r.case, r.metric
                ));
            }
        }
        Ok(())
    }

    /// The report as JSON (one record per line).
    pub fn to_json(&self) -> String {
        let mut out = String::from("[\n");
        for (i, r) in self.records.iter().enumerate() {
            out.push_str("  {\"case\": ");
            push_json_string(&mut out, &r.case);
            out.push_str(", \"impl\": ");
            push_json_string(&mut out, &r.impl_);
            out.push_str(", \"metric\": ");
            push_json_string(&mut out, &r.metric);
            // `Display` for f64 prints the shortest round-tripping decimal without an
            // exponent, which is valid JSON for every finite value.
            let _ = write!(
                out,
                ", \"value\": {}, \"better\": \"{}\"}}",
                r.value, r.better
            );
            out.push_str(if i + 1 < self.records.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        out.push_str("]\n");
        out
    }

    /// Parses the JSON written by [`Report::to_json`] (any JSON whitespace allowed; keys
    /// in any order; no other keys) into a report called `name`.
    pub fn parse(name: impl Into<String>, json: &str) -> Result<Self, ParseError> {
        Ok(Report::from_records(name, parse_records(json)?))
    }

    /// Reads `target/bench/<name>.json` (see [`report_path`]).
    pub fn read(name: &str) -> io::Result<Self> {
        let path = report_path(name)?;
        Self::read_from(name, &path)
    }

    /// Reads a report file from `path`.
    pub fn read_from(name: &str, path: &Path) -> io::Result<Self> {
        let text = fs::read_to_string(path)?;
        Report::parse(name, &text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Writes the report to `target/bench/<name>.json` (see [`report_path`]) and returns
    /// that path. Fails if [`Report::check`] does.
    pub fn write(&self) -> io::Result<PathBuf> {
        let path = report_path(&self.name)?;
        self.write_to(&path)?;
        Ok(path)
    }

    /// Writes the report to `path`, creating its directory. Fails if [`Report::check`]
    /// does.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        self.check()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        // Write-then-rename so a reader never sees half a file.
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, self.to_json())?;
        fs::rename(&tmp, path)
    }

    /// The comparison table as text: for every `(case, metric)`, each implementation's
    /// value, the ratio ours/theirs and which one is better.
    pub fn table(&self) -> String {
        let header = ["case", "metric", "impl", "value", "ours/impl", "verdict"];
        let mut rows: Vec<[String; 6]> = Vec::new();
        for ((case, metric), group) in self.groups() {
            let ours = group.iter().copied().find(|r| r.impl_ == OURS);
            let mut sorted: Vec<&Record> = group.clone();
            // Ours first, the rest in insertion order.
            sorted.sort_by_key(|r| r.impl_ != OURS);
            for r in sorted {
                let (ratio, verdict) = compare(ours, r);
                rows.push([
                    case.to_owned(),
                    format!("{metric} ({} is better)", r.better),
                    r.impl_.clone(),
                    format_value(r.value),
                    ratio,
                    verdict,
                ]);
            }
        }

        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = format!("bench {}: {} records\n", self.name, self.records.len());
        let mut line = |cells: [&str; 6]| {
            let mut text = String::new();
            for (col, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if col > 0 {
                    text.push_str("  ");
                }
                // Numbers right-aligned, text left-aligned.
                if col == 3 || col == 4 {
                    let _ = write!(text, "{cell:>w$}");
                } else {
                    let _ = write!(text, "{cell:<w$}");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(header);
        line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
        for row in &rows {
            line(row.each_ref().map(String::as_str));
        }
        out
    }

    /// Prints [`Report::table`] to standard output.
    pub fn print_table(&self) {
        print!("{}", self.table());
    }

    /// Records grouped by `(case, metric)`, groups in order of first appearance.
    fn groups(&self) -> Vec<((&str, &str), Vec<&Record>)> {
        let mut groups: Vec<((&str, &str), Vec<&Record>)> = Vec::new();
        for r in &self.records {
            let key = (r.case.as_str(), r.metric.as_str());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(r),
                None => groups.push((key, vec![r])),
            }
        }
        groups
    }
}

/// Ratio cell and verdict cell for `other` against `ours`.
fn compare(ours: Option<&Record>, other: &Record) -> (String, String) {
    let Some(ours) = ours else {
        return ("-".into(), format!("no {OURS} record"));
    };
    if other.impl_ == OURS {
        return ("-".into(), "(ours)".into());
    }
    let (a, b) = (ours.value, other.value);
    let ratio = if b == 0.0 {
        "n/a".to_owned()
    } else {
        format!("{:.3}", a / b)
    };
    if a == b {
        return (ratio, "tie".into());
    }
    let ours_wins = match ours.better {
        Better::Lower => a < b,
        Better::Higher => a > b,
    };
    let (winner, win, lose) = if ours_wins {
        (OURS, a, b)
    } else {
        (other.impl_.as_str(), b, a)
    };
    // How many times better the winner is, in the direction of the metric.
    let factor = match ours.better {
        Better::Lower if win != 0.0 => format!(" {:.2}x", lose / win),
        Better::Higher if lose != 0.0 => format!(" {:.2}x", win / lose),
        _ => String::new(),
    };
    (ratio, format!("{winner} better{factor}"))
}

/// Compact human formatting of a value for the table.
fn format_value(v: f64) -> String {
    let abs = v.abs();
    if v.fract() == 0.0 && abs < 1e15 {
        // Counts (instructions, bytes, operations) stay exact.
        format!("{v:.0}")
    } else if abs != 0.0 && !(1e-3..1e9).contains(&abs) {
        format!("{v:.4e}")
    } else {
        format!("{v:.3}")
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bench name {name:?} must be non-empty and use only [A-Za-z0-9_-]"
        ))
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The workspace root: the nearest ancestor of `$CARGO_MANIFEST_DIR` (set by cargo for
/// the programs it runs) or else of the current directory whose `Cargo.toml` has a
/// `[workspace]` table.
pub fn workspace_root() -> io::Result<PathBuf> {
    let start = match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir()?,
    };
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if let Ok(text) = fs::read_to_string(&manifest) {
            if text.lines().any(|l| l.trim() == "[workspace]") {
                return Ok(dir.to_path_buf());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no Cargo.toml with a [workspace] table in {} or above",
            start.display()
        ),
    ))
}

/// The cargo target directory: `$CARGO_TARGET_DIR` (a relative value is taken relative
/// to the workspace root) or `<workspace root>/target`.
pub fn target_dir() -> io::Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => Ok(PathBuf::from(dir)),
        Some(dir) => Ok(workspace_root()?.join(dir)),
        None => Ok(workspace_root()?.join("target")),
    }
}

/// Where the report called `name` lives: `<target dir>/bench/<name>.json`.
pub fn report_path(name: &str) -> io::Result<PathBuf> {
    check_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(target_dir()?.join("bench").join(format!("{name}.json")))
}

/// Why a report file did not parse: byte offset and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    offset: usize,
    message: String,
}

impl ParseError {
    /// Byte offset into the input where the problem was found.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a JSON array of records (the format of [`Report::to_json`]). Strict: every
/// object has exactly the keys `case`, `impl`, `metric` (strings), `value` (a finite
/// number) and `better` (`"lower"` or `"higher"`); nothing may follow the array.
pub fn parse_records(json: &str) -> Result<Vec<Record>, ParseError> {
    let mut p = Parser {
        src: json,
        bytes: json.as_bytes(),
        pos: 0,
    };
    p.skip_ws();
    p.expect(b'[')?;
    let mut records = Vec::new();
    p.skip_ws();
    if p.peek() == Some(b']') {
        p.pos += 1;
    } else {
        loop {
            p.skip_ws();
            records.push(p.record()?);
            p.skip_ws();
            match p.next() {
                Some(b',') => continue,
                Some(b']') => break,
                _ => return Err(p.error_before("expected `,` or `]` after a record")),
            }
        }
    }
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(p.error("unexpected data after the array"));
    }
    Ok(records)
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            offset: self.pos,
            message: message.into(),
        }
    }

    /// An error pointing at the byte just consumed.
    fn error_before(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            offset: self.pos.saturating_sub(1),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), ParseError> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected `{}`", char::from(want))))
        }
    }

    fn record(&mut self) -> Result<Record, ParseError> {
        let start = self.pos;
        self.expect(b'{')?;
        let (mut case, mut impl_, mut metric, mut value, mut better) =
            (None, None, None, None, None);
        loop {
            self.skip_ws();
            let key_at = self.pos;
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let duplicate = match key.as_str() {
                "case" => case.replace(self.string()?).is_some(),
                "impl" => impl_.replace(self.string()?).is_some(),
                "metric" => metric.replace(self.string()?).is_some(),
                "value" => value.replace(self.number()?).is_some(),
                "better" => {
                    let at = self.pos;
                    let s = self.string()?;
                    let b = Better::parse(&s).ok_or_else(|| ParseError {
                        offset: at,
                        message: format!("`better` must be \"lower\" or \"higher\", not {s:?}"),
                    })?;
                    better.replace(b).is_some()
                }
                other => {
                    return Err(ParseError {
                        offset: key_at,
                        message: format!("unknown key {other:?}"),
                    })
                }
            };
            if duplicate {
                return Err(ParseError {
                    offset: key_at,
                    message: format!("duplicate key {key:?}"),
                });
            }
            self.skip_ws();
            match self.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(self.error_before("expected `,` or `}` in a record")),
            }
        }
        let missing = |what: &str| ParseError {
            offset: start,
            message: format!("record is missing key {what:?}"),
        };
        Ok(Record {
            case: case.ok_or_else(|| missing("case"))?,
            impl_: impl_.ok_or_else(|| missing("impl"))?,
            metric: metric.ok_or_else(|| missing("metric"))?,
            value: value.ok_or_else(|| missing("value"))?,
            better: better.ok_or_else(|| missing("better"))?,
        })
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            // Copy the run of plain characters up to the next quote, backslash or
            // control character. Those are ASCII, so the run is a `str` boundary.
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            out.push_str(self.src.get(run_start..self.pos).unwrap_or_default());
            match self.next() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => {
                    let c = match self.next() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        _ => return Err(self.error_before("invalid escape")),
                    };
                    out.push(c);
                }
                Some(_) => return Err(self.error_before("control character in string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair `\uD8xx\uDCxx`.
    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let at = self.pos;
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                return Err(self.error_before("unpaired surrogate in \\u escape"));
            }
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(self.error_before("invalid low surrogate in \\u escape"));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or(ParseError {
            offset: at,
            message: "invalid \\u escape".into(),
        })
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self
            .src
            .get(self.pos..self.pos + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("expected four hex digits"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|e| self.error(e.to_string()))?;
        self.pos += 4;
        Ok(v)
    }

    /// A JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, finite.
    fn number(&mut self) -> Result<f64, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("expected a number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit after `.`"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit in the exponent"));
            }
            self.digits();
        }
        let text = self.src.get(start..self.pos).unwrap_or_default();
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(ParseError {
                offset: start,
                message: format!("number {text} is out of range"),
            }),
        }
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("ring");
        r.record("split/64", OURS, "ns/op", 40.0, Better::Lower)
            .record("split/64", "virtio-queue", "ns/op", 50.0, Better::Lower)
            .record("split/64", "slow", "ns/op", 20.0, Better::Lower)
            .record("packed/256", OURS, "Mops/s", 12.5, Better::Higher)
            .record(
                "packed/256",
                "virtio-drivers",
                "Mops/s",
                10.0,
                Better::Higher,
            );
        r
    }

    #[test]
    fn to_json_then_parse_round_trips() -> Result<(), ParseError> {
        let mut r = sample();
        r.record(
            "odd \"name\"\\\n\u{1}é😀",
            OURS,
            "x",
            -0.001_25,
            Better::Lower,
        )
        .record("big", OURS, "x", 1.5e300, Better::Higher)
        .record("tiny", OURS, "x", 5e-324, Better::Higher);
        let back = Report::parse("ring", &r.to_json())?;
        assert_eq!(back, r);
        Ok(())
    }

    #[test]
    fn parse_any_whitespace_and_key_order_accepted() -> Result<(), ParseError> {
        let json = "\r\n[ {\"better\":\"higher\" ,\"value\" : 1E+2,\"metric\":\"m\",\
                    \"impl\":\"a\\u00e9\\ud83d\\ude00\",\"case\":\"c\\/d\"} ]\n";
        let records = parse_records(json)?;
        assert_eq!(
            records,
            vec![Record {
                case: "c/d".into(),
                impl_: "aé😀".into(),
                metric: "m".into(),
                value: 100.0,
                better: Better::Higher,
            }]
        );
        assert_eq!(parse_records(" [ ] ")?, vec![]);
        Ok(())
    }

    #[test]
    fn parse_malformed_input_rejected() {
        let ok = r#"{"case":"c","impl":"i","metric":"m","value":1,"better":"lower"}"#;
        assert!(parse_records(&format!("[{ok}]")).is_ok());
        let bad = [
            String::new(),
            ok.to_owned(),
            format!("[{ok},]"),
            format!("[{ok}] x"),
            format!("[{ok}"),
            r#"[{"case":"c","impl":"i","metric":"m","value":1}]"#.into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":1,"better":"lower","x":1}]"#.into(),
            r#"[{"case":"c","case":"c","impl":"i","metric":"m","value":1,"better":"lower"}]"#
                .into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":1,"better":"less"}]"#.into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":"1","better":"lower"}]"#.into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":01,"better":"lower"}]"#.into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":1.,"better":"lower"}]"#.into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":1e999,"better":"lower"}]"#.into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":NaN,"better":"lower"}]"#.into(),
            r#"[{"case":"\q","impl":"i","metric":"m","value":1,"better":"lower"}]"#.into(),
            "[{\"case\":\"a\u{1}\",\"impl\":\"i\",\"metric\":\"m\",\"value\":1,\"better\":\"lower\"}]".into(),
            r#"[{"case":"\ud800","impl":"i","metric":"m","value":1,"better":"lower"}]"#.into(),
            r#"[{"case":"c","impl":"i","metric":"m","value":1,"better":"lower"}}]"#.into(),
        ];
        for json in &bad {
            assert!(parse_records(json).is_err(), "accepted: {json}");
        }
    }

    #[test]
    fn check_invalid_reports_rejected() {
        assert!(sample().check().is_ok());
        assert!(Report::new("ring").check().is_err());
        let mut r = sample();
        r.record("x", OURS, "m", f64::NAN, Better::Lower);
        assert!(r.check().is_err());
        let mut r = sample();
        r.record("split/64", OURS, "ns/op", 1.0, Better::Lower);
        assert!(r.check().is_err(), "duplicate accepted");
        let mut r = sample();
        r.record("split/64", "other", "ns/op", 1.0, Better::Higher);
        assert!(r.check().is_err(), "mixed direction accepted");
        let mut r = Report::new("../escape");
        r.record("c", OURS, "m", 1.0, Better::Lower);
        assert!(r.check().is_err(), "path-like name accepted");
        assert!(report_path("a/b").is_err());
    }

    #[test]
    fn table_ratios_and_verdicts_follow_direction() {
        let table = sample().table();
        let line = |needle: &str| {
            table
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_default()
                .to_owned()
        };
        let vq = line("virtio-queue");
        assert!(vq.contains("0.800"), "{table}");
        assert!(vq.contains("virtio-sdk better 1.25x"), "{table}");
        let slow = line(" slow ");
        assert!(slow.contains("2.000"), "{table}");
        assert!(slow.contains("slow better 2.00x"), "{table}");
        let vd = line("virtio-drivers");
        assert!(vd.contains("1.250"), "{table}");
        assert!(vd.contains("virtio-sdk better 1.25x"), "{table}");
        assert!(line("packed/256").contains("(ours)"), "{table}");
        // Ours comes first within a group even when recorded later.
        let mut r = Report::new("t");
        r.record("c", "other", "m", 2.0, Better::Lower)
            .record("c", OURS, "m", 2.0, Better::Lower);
        let t = r.table();
        let rows: Vec<&str> = t.lines().skip(3).collect();
        assert!(rows.first().is_some_and(|l| l.contains("(ours)")), "{t}");
        assert!(rows.get(1).is_some_and(|l| l.contains("tie")), "{t}");
    }

    #[test]
    fn table_without_ours_says_so() {
        let mut r = Report::new("t");
        r.record("c", "other", "m", 2.0, Better::Lower);
        assert!(r.table().contains("no virtio-sdk record"));
    }

    #[test]
    fn write_to_then_read_from_round_trips() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("bench-report-test-{}", std::process::id()));
        let path = dir.join("bench").join("ring.json");
        let r = sample();
        r.write_to(&path)?;
        let back = Report::read_from("ring", &path)?;
        fs::remove_dir_all(&dir)?;
        assert_eq!(back, r);
        Ok(())
    }

    #[test]
    fn workspace_root_from_member_is_repository_root() -> io::Result<()> {
        // Under `cargo test`, CARGO_MANIFEST_DIR is this crate; its parent is the root.
        let root = workspace_root()?;
        assert!(root.join("bench-report").join("Cargo.toml").is_file());
        Ok(())
    }
}
