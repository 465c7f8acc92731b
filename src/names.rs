//! Names from the data on their way out: category, cluster, state, lineage, gene and sample
//! names can hold any string (an `.h5ad` file stores whatever its writer put there). Before
//! such a name reaches a terminal, a CSV file or a file name it goes through one of these
//! helpers, so that it cannot move the cursor or recolour the terminal
//! ([`escape_for_terminal`]), break a CSV record ([`csv_field`], [`csv_record`]), or collide
//! with another name or exceed the file system's limit as a file name ([`file_stem`],
//! [`bound_length`], [`UniqueStems`]).
//!
//! ```
//! use cellfate::names::{csv_record, escape_for_terminal, file_stem, UniqueStems};
//! assert_eq!(escape_for_terminal("red\u{1b}[31m\nline"), "red\\x1b[31m\\nline");
//! assert_eq!(csv_record(["gene", "a,b", "say \"hi\""]), "gene,\"a,b\",\"say \"\"hi\"\"\"\n");
//! let mut stems = UniqueStems::new();
//! assert_eq!(stems.claim(&file_stem("A B")), "A_B");
//! assert_eq!(stems.claim(&file_stem("A\\B")), "A_B_2");
//! assert!(file_stem(&"x".repeat(5000)).len() <= cellfate::names::MAX_STEM_BYTES);
//! ```

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

/// Longest file-name stem (bytes) made from a name: well below the usual 255-byte limit of a
/// file name, leaving room for a prefix, a `_2` suffix and an extension.
pub const MAX_STEM_BYTES: usize = 100;

/// Characters that can change what a terminal shows beyond their own glyph: the Unicode
/// control characters (C0 with ESC, DEL, C1 with CSI) and the bidirectional overrides and
/// isolates (which reorder the rest of the line).
fn is_terminal_hazard(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

fn escape_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

fn escape_where(s: &str, hazard: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&hazard) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hazard(c) {
            escape_char(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A name (or any single-line text holding names) made safe for a terminal: every control
/// character, newlines and tabs included, is written as a visible escape (`\n`, `\t`, `\x1b`,
/// `\u{9b}`), and so are the bidirectional overrides. Text without them is returned as is.
pub fn escape_for_terminal(s: &str) -> Cow<'_, str> {
    escape_where(s, is_terminal_hazard)
}

/// Like [`escape_for_terminal`] for a whole multi-line message: line feeds and tabs are kept
/// (they are the message's own layout); every other control character is escaped. The last
/// line of defence before text is printed.
pub fn escape_terminal_text(s: &str) -> Cow<'_, str> {
    escape_where(s, |c| c != '\n' && c != '\t' && is_terminal_hazard(c))
}

/// JSON text (as `serde_json` writes it) made safe for a terminal and still valid JSON: the
/// characters [`escape_for_terminal`] escapes that `serde_json` leaves raw inside strings
/// (DEL, the C1 controls, the bidirectional overrides) become `\uXXXX` escapes, which parse
/// back to the same strings. Line feeds and tabs (the layout of pretty JSON) are kept.
pub fn escape_json_for_terminal(json: &str) -> Cow<'_, str> {
    let hazard = |c: char| c != '\n' && c != '\t' && is_terminal_hazard(c);
    if !json.chars().any(hazard) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if hazard(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{:04x}", u);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One CSV field under RFC 4180: a field holding a comma, a double quote, a carriage return or
/// a line feed is enclosed in double quotes, with its double quotes doubled; any other field
/// is returned as is.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

/// One CSV record: the fields through [`csv_field`], separated by commas, ending in a line
/// feed.
pub fn csv_record<I, S>(fields: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for (k, f) in fields.into_iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(f.as_ref()));
    }
    out.push('\n');
    out
}

/// The fields of one CSV record on one line, under RFC 4180 (the reverse of [`csv_record`]
/// for records without line breaks): a field in double quotes may hold commas and doubled
/// double quotes; spaces around unquoted fields are kept. `None` when a quote is not closed or
/// a closing quote is followed by anything but a comma.
pub fn parse_csv_line(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Some(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Some(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// A short, stable hash of a string: 8 hex digits of its 64-bit FNV-1a hash folded to 32
/// bits. The same on every platform and release, so names derived from it do not change
/// between runs.
pub fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h ^ (h >> 32)) as u32)
}

/// `name` bounded to `max_bytes` bytes: a longer name is cut (at a character boundary) and
/// ends in `_` and [`short_hash`] of the whole of `hash_of`, so that two long names sharing a
/// prefix stay distinct. `max_bytes` below 16 is taken as 16.
pub fn bound_length<'a>(name: &'a str, hash_of: &str, max_bytes: usize) -> Cow<'a, str> {
    let max_bytes = max_bytes.max(16);
    if name.len() <= max_bytes {
        return Cow::Borrowed(name);
    }
    let mut cut = max_bytes - 9;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}_{}", &name[..cut], short_hash(hash_of)))
}

/// A file-name stem made from a name: ASCII letters and digits are kept, every other
/// character becomes `_` (so no path separator, control character or shell-special character
/// survives), and the result is bounded to [`MAX_STEM_BYTES`] (see [`bound_length`]; the hash
/// is of the original name). Different names can give the same stem (`A B`, `A\B`): make them
/// unique with [`UniqueStems`].
pub fn file_stem(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let safe = if safe.is_empty() { "_".into() } else { safe };
    bound_length(&safe, name, MAX_STEM_BYTES).into_owned()
}

/// Hands out file-name stems that are unique within a set, comparing without regard to case
/// (as macOS and Windows file systems do): the first claim of a stem gets it as is, later
/// claims get `_2`, `_3`, ... appended. Deterministic: the same claims in the same order give
/// the same stems.
#[derive(Clone, Debug, Default)]
pub struct UniqueStems {
    taken: HashSet<String>,
}

impl UniqueStems {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `stem` as taken (e.g. a fixed file name beside the generated ones).
    pub fn reserve(&mut self, stem: &str) {
        self.taken.insert(stem.to_lowercase());
    }

    /// Whether `stem` (in any case) is taken.
    pub fn is_taken(&self, stem: &str) -> bool {
        self.taken.contains(&stem.to_lowercase())
    }

    /// `stem`, or `stem_2`, `stem_3`, ... when taken; the result is taken from now on.
    pub fn claim(&mut self, stem: &str) -> String {
        let mut candidate = stem.to_string();
        let mut k = 2usize;
        while self.is_taken(&candidate) {
            candidate = format!("{stem}_{k}");
            k += 1;
        }
        self.reserve(&candidate);
        candidate
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_lines_parse_back() {
        use super::{csv_record, parse_csv_line};
        for rec in [
            vec!["a", "b"],
            vec!["cell,1", "state \"x\""],
            vec!["", ""],
            vec!["\"", ","],
        ] {
            let line = csv_record(&rec);
            assert_eq!(
                parse_csv_line(line.trim_end_matches('\n')),
                Some(rec.iter().map(|s| s.to_string()).collect())
            );
        }
        assert_eq!(parse_csv_line("\"open,b"), None);
        assert_eq!(parse_csv_line("\"a\"x,b"), None);
    }

    use super::*;

    #[test]
    fn terminal_escapes() {
        assert_eq!(escape_for_terminal("plain name"), "plain name");
        assert!(matches!(escape_for_terminal("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_for_terminal("a\u{1b}]0;title\u{7}b\r\n\t\u{7f}"),
            "a\\x1b]0;title\\x07b\\r\\n\\t\\x7f"
        );
        assert_eq!(escape_for_terminal("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape_for_terminal("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(escape_for_terminal("Zellen β"), "Zellen β");
        assert_eq!(
            escape_terminal_text("line 1\n\tline \u{1b}[2J2\n"),
            "line 1\n\tline \\x1b[2J2\n"
        );
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({"name": "a\u{1b}[31m\u{7f}\u{9b}\u{202e}b\n", "n": 1});
        let text = serde_json::to_string_pretty(&v).expect("json");
        let safe = escape_json_for_terminal(&text);
        assert!(
            !safe.chars().any(|c| c != '\n' && is_terminal_hazard(c)),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back, v);
        assert!(matches!(
            escape_json_for_terminal("{\"a\": 1}"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
        assert_eq!(csv_field("a\rb"), "\"a\rb\"");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_record(["x", "y,z"]), "x,\"y,z\"\n");
        assert_eq!(csv_record(Vec::<String>::new()), "\n");
    }

    #[test]
    fn stems_are_safe_bounded_and_unique() {
        assert_eq!(file_stem("Alpha"), "Alpha");
        assert_eq!(file_stem("A B"), "A_B");
        assert_eq!(file_stem("../../etc/passwd"), "______etc_passwd");
        assert_eq!(file_stem(""), "_");
        let long = "x".repeat(5000);
        let s = file_stem(&long);
        assert_eq!(s.len(), MAX_STEM_BYTES);
        assert!(s.ends_with(&format!("_{}", short_hash(&long))));
        // Two long names with the same prefix stay distinct.
        assert_ne!(s, file_stem(&format!("{long}y")));
        // Multi-byte characters are cut at a boundary.
        let accents = "é".repeat(100);
        let b = bound_length(&accents, "h", 20);
        assert!(b.len() <= 20 && b.starts_with("éé"));
        let mut u = UniqueStems::new();
        u.reserve("drivers");
        assert_eq!(u.claim("A_B"), "A_B");
        assert_eq!(u.claim("a_b"), "a_b_2");
        assert_eq!(u.claim("A_B"), "A_B_3");
        assert_eq!(u.claim("Drivers"), "Drivers_2");
        assert_eq!(short_hash("abc"), short_hash("abc"));
        assert_ne!(short_hash("abc"), short_hash("abd"));
    }
}
