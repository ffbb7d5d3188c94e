//! Terminal details: colours only on a terminal, figures a person reads at a glance.

/// How the CLI talks to the person running it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    /// stdout is a terminal: a live progress bar and colours.
    pub(crate) tty: bool,
    /// `-v`: library logs are printed as they happen (a redrawn bar would garble them).
    pub(crate) verbose: bool,
}

impl Ui {
    pub(crate) fn new(tty: bool, verbose: bool) -> Self {
        Self { tty, verbose }
    }

    /// A health grade, coloured on a terminal.
    pub(crate) fn grade(&self, grade: &str) -> String {
        let colour = match grade {
            "good" => "32",
            "warning" => "33",
            "critical" => "31",
            _ => return grade.to_owned(),
        };
        self.paint(grade, colour)
    }

    /// A `check` verdict (ok, warning, critical), coloured as the grades.
    pub(crate) fn verdict(&self, verdict: &str) -> String {
        let colour = match verdict {
            "ok" => "32",
            "warning" => "33",
            _ => "31",
        };
        self.paint(verdict, colour)
    }

    pub(crate) fn bold(&self, text: &str) -> String {
        self.paint(text, "1")
    }

    fn paint(&self, text: &str, sgr: &str) -> String {
        if self.tty {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds with the precision that matters at their size.
pub(crate) fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3} ms")
    } else if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 1000.0 {
        format!("{v:.1} ms")
    } else {
        format!("{} ms", thousands(v.round() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_at_a_glance() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(ms(0.4213), "0.421 ms");
        assert_eq!(ms(4.213), "4.21 ms");
        assert_eq!(ms(42.13), "42.1 ms");
        assert_eq!(ms(4213.0), "4,213 ms");
        let plain = Ui::new(false, false);
        assert_eq!(plain.grade("good"), "good");
        assert!(Ui::new(true, false).grade("critical").contains("\x1b[31m"));
    }
}
