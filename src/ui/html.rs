//! HTML text: escaping and the page frame every page shares.

use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a path segment or query value for a URL.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The page around `main`: the header, the styles and the script, all from the binary.
/// `source` says what is shown (a runs directory, a cluster context and namespace).
pub fn frame(title: &str, source: &str, crumbs: &[(String, String)], main: &str) -> String {
    let mut nav = String::new();
    for (href, label) in crumbs {
        let _ = write!(
            nav,
            r#"<span class="sep">/</span><a href="{href}">{}</a>"#,
            esc(label)
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title} · nasop</title><link rel="stylesheet" href="/assets/app.css"><link rel="icon" href="data:,">
<script>document.documentElement.dataset.theme=localStorage.getItem("nasop-theme")||"";</script>
</head><body>
<header><a class="brand" href="/">nasop</a>{nav}<span class="grow"></span><span class="source" title="what this page shows">{source}</span><span id="live" class="live" title="live updates">●</span><button id="theme" type="button" title="light or dark (t)">◐</button></header>
<main id="main">{main}</main>
<script src="/assets/app.js"></script>
</body></html>"#,
        title = esc(title),
        source = esc(source),
    )
}

/// A message where a page's content would be: what went wrong and what to do.
pub fn problem(title: &str, detail: &str) -> String {
    format!(
        r#"<section class="problem" role="alert"><h1>{}</h1><p>{}</p></section>"#,
        esc(title),
        esc(detail)
    )
}

/// "3m", "2h", "5d": a duration the way kubectl prints an age.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    if s < 120 {
        format!("{s}s")
    } else if s < 2 * 3600 {
        format!("{}m", s / 60)
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url("a b/c|~"), "a%20b%2Fc%7C~");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5.0), "5s");
        assert_eq!(age(600.0), "10m");
        assert_eq!(age(3.0 * 3600.0), "3h");
        assert_eq!(age(3.0 * 86400.0), "3d");
    }
}
