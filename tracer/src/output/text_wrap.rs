//! Text for a 100-column terminal: prose wrapped at word boundaries with a hanging indent,
//! and shell commands set apart in their own block, broken only where the shell allows (a
//! space outside quotes, continued with ` \`), so they still paste and run.

use std::borrow::Cow;

/// `text` safe to print on a terminal: control characters other than newline and tab (an ESC
/// starting a terminal sequence, a carriage return overwriting a line, C1 controls) and the
/// Unicode controls that reorder text (bidirectional overrides and isolates) are shown escaped
/// (`\u{1b}`). Every text view passes through this: certificate subjects, process names, set
/// names and `/history` answers are anyone's text.
pub fn printable(text: &str) -> Cow<'_, str> {
    let hostile = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hostile) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hostile(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The report's width: a 100-column terminal shows every line whole.
pub const WIDTH: usize = 100;

/// Commands a next step may end with, after "...: ".
const COMMAND_WORDS: [&str; 18] = [
    "nft ",
    "iptables ",
    "ip6tables ",
    "for ",
    "ufw ",
    "firewall-cmd ",
    "fail2ban-client ",
    "sysctl ",
    "ip ",
    "cscli ",
    "ss ",
    "docker ",
    "systemctl ",
    "tracer ",
    "sudo ",
    "echo ",
    "conntrack ",
    "curl ",
];

/// `text` wrapped to `width` columns: the first line starts with `first`, the others with
/// `rest`. A word longer than a line is left whole on a line of its own.
pub fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::from(first);
    let mut empty = true;
    for word in text.split_whitespace() {
        let room = width.saturating_sub(line.chars().count());
        let need = word.chars().count() + usize::from(!empty);
        if !empty && need > room {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(rest);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

/// A next step split into its prose and the command it ends with, when it ends with one
/// ("Allow Cloudflare's ranges with ufw: for r in ...; done" → prose, command).
pub fn split_command(step: &str) -> (&str, Option<&str>) {
    let mut from = 0;
    while let Some(at) = step[from..].find(": ") {
        let colon = from + at;
        let tail = &step[colon + 2..];
        if COMMAND_WORDS.iter().any(|w| tail.starts_with(w)) {
            return (&step[..colon + 1], Some(tail.trim_end()));
        }
        from = colon + 2;
    }
    (step, None)
}

/// A shell command broken into lines of at most `width` columns, each but the last ending in
/// ` \`, the continuation lines indented by two more spaces. Breaks only at spaces outside
/// quotes (a break inside quotes would change the argument); a piece that cannot be broken
/// stays whole.
pub fn break_command(cmd: &str, indent: &str, width: usize) -> Vec<String> {
    // Pieces between breakable spaces.
    let mut pieces: Vec<String> = Vec::new();
    let mut piece = String::new();
    let mut quote: Option<char> = None;
    for c in cmd.chars() {
        match (quote, c) {
            (None, ' ') => {
                if !piece.is_empty() {
                    pieces.push(std::mem::take(&mut piece));
                }
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        piece.push(c);
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    let cont = format!("{indent}  ");
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::from(indent);
    let mut empty = true;
    for p in pieces {
        // Room for " \" at the end of a line that continues.
        let room = width.saturating_sub(line.chars().count() + 2);
        if !empty && p.chars().count() + 1 > room {
            line.push_str(" \\");
            lines.push(line);
            line = cont.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(&p);
        empty = false;
    }
    lines.push(line);
    lines
}

/// A numbered next step: its prose wrapped, its command (if any) in a block below it.
pub fn step(n: usize, text: &str, indent: &str) -> String {
    let (prose, command) = split_command(text);
    let first = format!("{indent}{n}. ");
    let rest = " ".repeat(first.chars().count());
    let mut out = wrap(prose, &first, &rest, WIDTH);
    if let Some(cmd) = command {
        for line in break_command(cmd, &format!("{rest}  "), WIDTH) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert!(matches!(printable("plain\ntext\tok"), Cow::Borrowed(_)));
        assert_eq!(
            printable("CN=\u{1b}[2Jevil\r\u{9b}x\u{202e}gpj.exe"),
            "CN=\\u{1b}[2Jevil\\u{d}\\u{9b}x\\u{202e}gpj.exe"
        );
    }

    #[test]
    fn prose_wraps_at_words_with_a_hanging_indent() {
        let text = "the edge's SYNs to 192.0.2.1:443 are dropped by rule 3 of chain input in table inet filter, which drops every address in set f2b-nginx";
        let out = wrap(text, "  - ", "    ", 40);
        for line in out.lines() {
            assert!(line.chars().count() <= 40, "{line:?}");
        }
        assert!(out.starts_with("  - the edge's"));
        assert!(out.lines().skip(1).all(|l| l.starts_with("    ")));
        // Nothing lost, nothing broken mid-word.
        let words: Vec<&str> = out.split_whitespace().filter(|w| *w != "-").collect();
        assert_eq!(words, text.split_whitespace().collect::<Vec<_>>());
    }

    #[test]
    fn a_word_longer_than_the_line_stays_whole() {
        let long = "x".repeat(60);
        let out = wrap(&format!("a {long} b"), "", "", 40);
        assert_eq!(out, format!("a\n{long}\nb\n"));
    }

    #[test]
    fn a_step_ending_in_a_command_is_split_there() {
        let (prose, cmd) = split_command(
            "Allow Cloudflare's ranges with ufw: for r in 1.2.3.0/24; do ufw allow from $r; done",
        );
        assert_eq!(prose, "Allow Cloudflare's ranges with ufw:");
        assert_eq!(cmd, Some("for r in 1.2.3.0/24; do ufw allow from $r; done"));
        assert_eq!(
            split_command("Check the DNS record: it must point here").1,
            None
        );
    }

    /// The broken command, its continuations joined back as the shell does, is the command.
    #[test]
    fn commands_break_outside_quotes_and_join_back() {
        let ranges: Vec<String> = (0..22).map(|i| format!("10.{i}.0.0/16")).collect();
        let cmd = format!(
            "for r in {}; do firewall-cmd --permanent --zone=public --add-rich-rule=\"rule source address=$r port port=443 protocol=tcp accept\"; done; firewall-cmd --reload",
            ranges.join(" ")
        );
        let lines = break_command(&cmd, "      ", WIDTH);
        assert!(lines.len() > 2);
        for l in &lines {
            assert!(l.chars().count() <= WIDTH, "{l:?}");
        }
        let joined: Vec<String> = lines
            .iter()
            .map(|l| l.trim().trim_end_matches('\\').trim().to_string())
            .collect();
        assert_eq!(joined.join(" "), cmd);
        // The quoted rich rule is one piece on one line.
        assert!(lines
            .iter()
            .any(|l| l.contains("\"rule source address=$r port port=443 protocol=tcp accept\";")));
    }
}
