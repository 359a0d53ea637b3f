//! dom0: progress while a qube is backed up. On a terminal one line redrawn in place (bytes
//! read of the volume's used size, rate, ETA); otherwise (journal) a plain line every 30 s.
//! Numbers come from the job and may be lies: they are only displayed, never trusted.

use std::io::Write;
use std::time::{Duration, Instant};

pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub struct Display {
    tty: bool,
    qube: String,
    total: u64,
    start: Instant,
    last: Option<Instant>,
    drawn: bool,
}

impl Display {
    pub fn new(tty: bool) -> Display {
        Display {
            tty,
            qube: String::new(),
            total: 0,
            start: Instant::now(),
            last: None,
            drawn: false,
        }
    }

    pub fn start(&mut self, qube: &str, total: u64) {
        self.qube = qube.to_string();
        self.total = total;
        self.start = Instant::now();
        self.last = None;
    }

    pub fn line(&self, done: u64) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let mut s = format!("{}: {}", self.qube, human(done));
        if self.total > 0 {
            if done <= self.total {
                s += &format!(" of {} ({}%)", human(self.total), done * 100 / self.total);
                if rate >= 1.0 {
                    let eta = ((self.total - done) as f64 / rate) as u64;
                    s += &format!(
                        ", {}/s, ETA {}:{:02}:{:02}",
                        human(rate as u64),
                        eta / 3600,
                        eta / 60 % 60,
                        eta % 60
                    );
                }
            } else {
                s += &format!(
                    " (more than the {} in use), {}/s",
                    human(self.total),
                    human(rate as u64)
                );
            }
        }
        s
    }

    pub fn progress(&mut self, w: &mut dyn Write, done: u64) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(30)
        };
        if self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let line = self.line(done);
        if self.tty {
            let _ = write!(w, "\r\x1b[K{line}");
            self.drawn = true;
        } else {
            let _ = writeln!(w, "qvm-backup-borg: {line}");
        }
        let _ = w.flush();
    }

    pub fn phase(&mut self, w: &mut dyn Write, phase: &str) {
        if !self.tty {
            let _ = writeln!(w, "qvm-backup-borg: {}: {phase}", self.qube);
        }
    }

    pub fn clear_line(&mut self, w: &mut dyn Write) {
        if self.drawn {
            let _ = write!(w, "\r\x1b[K");
            self.drawn = false;
        }
    }

    pub fn finish(&mut self, w: &mut dyn Write) {
        self.clear_line(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_lies_are_shown_plainly() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
        let mut d = Display::new(false);
        d.start("work", 1000);
        assert!(
            d.line(500).starts_with("work: 500 B of 1000 B (50%)"),
            "{}",
            d.line(500)
        );
        assert!(d.line(5000).contains("more than the 1000 B in use"));
        assert!(d.line(u64::MAX).contains("more than"));
    }
}
