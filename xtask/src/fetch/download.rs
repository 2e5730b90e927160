//! Downloading the archive over HTTP(S) (ureq + rustls) with retries and
//! resumption of a partial download by Range requests.

use anyhow::Result;
use std::io::{Read, Write};
use std::path::Path;

/// Downloads `url` to `part` (resuming it with a Range request when it
/// exists), retrying up to `retries` times.
pub fn download(url: &str, part: &Path, retries: usize) -> Result<()> {
    let mut last_err = None;
    for attempt in 0..=retries {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = ureq::get(url);
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()), // already complete
            Err(e) => {
                last_err = Some(anyhow::anyhow!("{url}: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(200 * (attempt as u64 + 1)));
                continue;
            }
        };
        let resumed = resp.status() == 206;
        let total: Option<u64> = resp
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .map(|n: u64| if resumed { n + have } else { n });
        let mut file = if resumed {
            std::fs::OpenOptions::new().append(true).open(part)?
        } else {
            std::fs::File::create(part)?
        };
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "download [{bar:30}] {bytes}/{total_bytes} ({eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(if resumed { have } else { 0 });
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let outcome: std::io::Result<()> = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = file.write_all(&buf[..n]) {
                        break Err(e);
                    }
                    bar.inc(n as u64);
                }
                Err(e) => break Err(e),
            }
        };
        bar.finish_and_clear();
        file.sync_all()?;
        let now = std::fs::metadata(part)?.len();
        match (outcome, total) {
            (Ok(()), Some(t)) if now == t => return Ok(()),
            (Ok(()), None) => return Ok(()),
            (res, _) => {
                last_err = Some(anyhow::anyhow!(
                    "{url}: connection ended after {now} bytes{}",
                    res.err().map(|e| format!(" ({e})")).unwrap_or_default()
                ));
                eprintln!(
                    "download interrupted at {now} bytes; resuming (attempt {} of {})",
                    attempt + 1,
                    retries
                );
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("{url}: download failed")))
}
