//! `net-check`: a checksummed, sequenced UDP stream for end-to-end tests, run on the Linux side of a link.
//!
//! ```text
//! net-check echo   --bind IP:PORT [--count N] [--idle-timeout-s S]
//! net-check stream --to IP:PORT --count N [--size BYTES] [--window W] [--timeout-s S] [--bind IP:PORT]
//! ```
//!
//! `stream` sends N datagrams, each carrying a magic, its sequence number, its length, a pattern derived from the
//! sequence number and an FNV-1a checksum of all that. It expects every datagram back from an echo peer (ours or
//! `net-check echo`), verifies it, and resends any datagram not echoed within the retransmit timeout, keeping at most
//! W unanswered. Every datagram therefore crosses the link both ways. It prints one line,
//! `net-check: PASS sent=.. echoed=.. corrupt=0 duplicates=.. retransmits=.. seconds=.. rate=..pps` or
//! `net-check: FAIL <reason> ...`, and exits 0 or 1. A corrupted echo is a failure; a lost one is retried (losses
//! are reported, not hidden).
//!
//! `echo` sends every datagram back to its sender; it stops after N datagrams (`--count`) or after S seconds without
//! traffic (`--idle-timeout-s`), printing `net-check: echo received=.. sent=..`.

// Datagram building slices at constant offsets of buffers whose size `Options::parse` bounds to MIN_SIZE..=MAX_SIZE.
#![allow(clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x4e43_484b; // "NCHK"
/// magic (4) + sequence (8) + length (4), then the pattern, then the checksum (4).
const HEADER_LEN: usize = 16;
const MIN_SIZE: usize = HEADER_LEN + 4;
const MAX_SIZE: usize = 65_507;
const RETRANSMIT_AFTER: Duration = Duration::from_millis(300);

const USAGE: &str = "\
usage:
  net-check echo   --bind IP:PORT [--count N] [--idle-timeout-s S]
  net-check stream --to IP:PORT --count N [--size BYTES] [--window W] [--timeout-s S] [--bind IP:PORT]

stream: N checksummed, sequenced UDP datagrams of BYTES (default 128, 20..=65507), each echoed back by the peer and
verified; at most W (default 64) unanswered; lost ones resent after 300 ms; FAIL when any echo is corrupted or the
whole stream takes longer than S seconds (default 120). Prints one PASS/FAIL line, exit 0/1.
echo: sends each datagram back to its sender; stops after N datagrams or S idle seconds.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((mode, rest)) if mode == "echo" => Options::parse(rest).and_then(|o| echo(&o)),
        Some((mode, rest)) if mode == "stream" => Options::parse(rest).and_then(|o| stream(&o)),
        Some((flag, _)) if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(format!("expected a mode\n{USAGE}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("net-check: FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct Options {
    bind: Option<SocketAddr>,
    to: Option<SocketAddr>,
    count: Option<u64>,
    size: usize,
    window: usize,
    timeout: Duration,
    idle_timeout: Option<Duration>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Options {
            bind: None,
            to: None,
            count: None,
            size: 128,
            window: 64,
            timeout: Duration::from_secs(120),
            idle_timeout: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("bad value `{value}` for {flag}: {e}");
            match flag.as_str() {
                "--bind" => o.bind = Some(value.parse().map_err(|e| bad(&e))?),
                "--to" => o.to = Some(value.parse().map_err(|e| bad(&e))?),
                "--count" => o.count = Some(value.parse().map_err(|e| bad(&e))?),
                "--size" => o.size = value.parse().map_err(|e| bad(&e))?,
                "--window" => o.window = value.parse().map_err(|e| bad(&e))?,
                "--timeout-s" => {
                    o.timeout = Duration::from_secs(value.parse().map_err(|e| bad(&e))?);
                }
                "--idle-timeout-s" => {
                    o.idle_timeout = Some(Duration::from_secs(value.parse().map_err(|e| bad(&e))?));
                }
                _ => return Err(format!("unknown option {flag}\n{USAGE}")),
            }
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&o.size) {
            return Err(format!("--size must be in {MIN_SIZE}..={MAX_SIZE}"));
        }
        if o.window == 0 {
            return Err("--window must be at least 1".into());
        }
        Ok(o)
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Fills `buf` (whose length is the datagram size) with datagram `seq`.
fn build(buf: &mut [u8], seq: u64) {
    let len = buf.len();
    let (body, sum) = buf.split_at_mut(len - 4);
    let (header, pattern) = body.split_at_mut(HEADER_LEN);
    header[..4].copy_from_slice(&MAGIC.to_be_bytes());
    header[4..12].copy_from_slice(&seq.to_be_bytes());
    header[12..16].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    let seed = seq.to_le_bytes();
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = seed[i % 8] ^ i.to_le_bytes()[0];
    }
    sum.copy_from_slice(&fnv1a(body).to_be_bytes());
}

/// The sequence number of a well-formed datagram of the expected size, or `None` if it is corrupt.
fn verify(datagram: &[u8], size: usize, scratch: &mut [u8]) -> Option<u64> {
    if datagram.len() != size {
        return None;
    }
    let (body, sum) = datagram.split_at(size - 4);
    if fnv1a(body).to_be_bytes() != sum {
        return None;
    }
    let magic = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(body.get(4..12)?.try_into().ok()?);
    let len = u32::from_be_bytes(body.get(12..16)?.try_into().ok()?);
    // The checksum only proves the bytes match each other; the pattern proves they are this datagram's.
    let expect = scratch.get_mut(..size)?;
    build(expect, seq);
    (magic == MAGIC && usize::try_from(len).ok() == Some(size) && *expect == *datagram)
        .then_some(seq)
}

fn echo(o: &Options) -> Result<bool, String> {
    let bind = o.bind.ok_or("echo needs --bind IP:PORT")?;
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    socket
        .set_read_timeout(Some(o.idle_timeout.unwrap_or(Duration::from_secs(3600))))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_536];
    let (mut received, mut sent) = (0u64, 0u64);
    while o.count.is_none_or(|n| received < n) {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                received += 1;
                if socket.send_to(buf.get(..n).unwrap_or(&[]), peer).is_ok() {
                    sent += 1;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break;
            }
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    println!("net-check: echo received={received} sent={sent}");
    Ok(true)
}

/// Sends one datagram. A refusal (an ICMP port unreachable from an earlier datagram, e.g. the peer is not up yet)
/// is not fatal: the datagram counts as sent and the retransmit timer tries again.
fn send(socket: &UdpSocket, datagram: &[u8]) -> Result<(), String> {
    match socket.send(datagram) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("send: {e}")),
    }
}

fn stream(o: &Options) -> Result<bool, String> {
    let to = o.to.ok_or("stream needs --to IP:PORT")?;
    let count = o.count.ok_or("stream needs --count N")?;
    let total = usize::try_from(count).map_err(|_| "--count too large")?;
    let bind = o.bind.unwrap_or_else(|| {
        if to.is_ipv4() {
            "0.0.0.0:0".parse()
        } else {
            "[::]:0".parse()
        }
        .unwrap_or(to)
    });
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    socket
        .connect(to)
        .map_err(|e| format!("connect {to}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;

    let mut echoed = vec![false; total];
    // Unanswered datagrams in the order they were (re)sent: (seq, when).
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(o.window);
    let mut out = vec![0u8; o.size];
    let mut input = vec![0u8; 65_536];
    let mut scratch = vec![0u8; o.size];
    let (mut next, mut done) = (0u64, 0u64);
    let (mut sent, mut corrupt, mut duplicates, mut retransmits, mut stray) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();

    while done < count {
        if start.elapsed() > o.timeout {
            println!(
                "net-check: FAIL timeout after {} s: echoed={done}/{count} sent={sent} corrupt={corrupt} \
                 retransmits={retransmits}",
                o.timeout.as_secs()
            );
            return Ok(false);
        }
        // Resend what has waited too long (oldest first), then fill the window with new datagrams.
        let now = Instant::now();
        let mut resend = 0;
        while let Some(&(seq, when)) = in_flight.front() {
            let acked = usize::try_from(seq)
                .ok()
                .and_then(|i| echoed.get(i))
                .copied()
                .unwrap_or(true);
            if acked {
                in_flight.pop_front();
                continue;
            }
            if now.duration_since(when) < RETRANSMIT_AFTER || resend >= o.window {
                break;
            }
            in_flight.pop_front();
            build(&mut out, seq);
            send(&socket, &out)?;
            in_flight.push_back((seq, now));
            sent += 1;
            retransmits += 1;
            resend += 1;
        }
        while next < count && in_flight.len() < o.window {
            build(&mut out, next);
            send(&socket, &out)?;
            in_flight.push_back((next, Instant::now()));
            next += 1;
            sent += 1;
        }
        match socket.recv(&mut input) {
            Ok(n) => match verify(input.get(..n).unwrap_or(&[]), o.size, &mut scratch) {
                Some(seq) => match usize::try_from(seq).ok().and_then(|i| echoed.get_mut(i)) {
                    Some(slot) if !*slot => {
                        *slot = true;
                        done += 1;
                    }
                    Some(_) => duplicates += 1,
                    None => stray += 1,
                },
                None => corrupt += 1,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let verdict = if corrupt == 0 && stray == 0 {
        "PASS"
    } else {
        "FAIL"
    };
    println!(
        "net-check: {verdict} sent={sent} echoed={done} corrupt={corrupt} stray={stray} duplicates={duplicates} \
         retransmits={retransmits} size={} seconds={seconds:.2} rate={:.0}pps",
        o.size,
        count as f64 / seconds.max(1e-9),
    );
    Ok(verdict == "PASS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_built_datagram_returns_its_sequence() {
        let mut d = vec![0u8; 128];
        let mut scratch = vec![0u8; 128];
        build(&mut d, 77);
        assert_eq!(verify(&d, 128, &mut scratch), Some(77));
    }

    #[test]
    fn verify_any_flipped_byte_or_wrong_size_is_corrupt() {
        let mut scratch = vec![0u8; 64];
        for i in 0..64 {
            let mut d = vec![0u8; 64];
            build(&mut d, 5);
            d[i] ^= 0x40;
            assert_eq!(verify(&d, 64, &mut scratch), None, "flip at {i} not caught");
        }
        let mut d = vec![0u8; 64];
        build(&mut d, 5);
        assert_eq!(verify(&d[..63], 64, &mut scratch), None);
    }
}
