//! Text normalisation for the built-in classifier: one canonical, matchable form per message.
//!
//! Owns NFKC-style folding, lowercasing, format-character stripping, homoglyph and leetspeak
//! mapping, spaced-letter collapsing and whitespace collapsing. It must not do I/O, allocate
//! when the text is already normal, panic, or take more than linear time on any input.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::{
    canonical_combining_class, decompose_compatible, is_combining_mark,
};

/// Normalises `text` for matching; borrows when the text is already normal.
pub fn normalize(text: &str) -> Cow<'_, str> {
    let mut buf = NormBuf::default();
    match normalize_at(text, &mut buf) {
        Normalized::Text(n) => Cow::Borrowed(&text[..n]),
        w => Cow::Owned(buf.get(text, w).to_owned()),
    }
}

/// Reusable buffers of the normaliser: with them, normalising allocates nothing once they
/// have grown to the largest message seen.
#[derive(Default)]
pub struct NormBuf {
    /// The character pass's output (when the text was not already printable lowercase).
    fold: String,
    /// The token pass's output (when it changed anything).
    out: String,
    /// NFKD/NFC staging for runs of non-ASCII characters.
    scratch: String,
}

/// Where the normalised text is: a prefix of the input, of `NormBuf::fold`, or `NormBuf::out`.
#[derive(Clone, Copy)]
enum Normalized {
    Text(usize),
    Fold(usize),
    Out,
}

impl NormBuf {
    /// Normalises `text` into (or borrowing) these buffers; same result as `normalize`.
    pub fn normalize<'a>(&'a mut self, text: &'a str) -> &'a str {
        let w = normalize_at(text, self);
        self.get(text, w)
    }

    fn get<'a>(&'a self, text: &'a str, w: Normalized) -> &'a str {
        match w {
            Normalized::Text(n) => &text[..n],
            Normalized::Fold(n) => &self.fold[..n],
            Normalized::Out => &self.out,
        }
    }

    /// Drops buffers grown by an unusually long text, so an idle thread does not keep them.
    pub fn shrink(&mut self, max: usize) {
        for b in [&mut self.fold, &mut self.out, &mut self.scratch] {
            if b.capacity() > max {
                *b = String::new();
            }
        }
    }
}

fn normalize_at(text: &str, buf: &mut NormBuf) -> Normalized {
    let NormBuf { fold, out, scratch } = buf;
    let shape = char_shape(text.as_bytes());
    let src: &str = match shape {
        // The character pass would leave it unchanged.
        CharShape::Simple => text,
        CharShape::Ascii => {
            // Byte-wise, branch-free (so vectorised): no per-char UTF-8 encoding.
            let mut bytes = std::mem::take(fold).into_bytes();
            bytes.clear();
            bytes.extend(text.bytes().map(fold_ascii_byte));
            *fold = String::from_utf8(bytes).expect("ASCII stays ASCII");
            fold
        }
        CharShape::Unicode => {
            fold_chars(text, scratch, fold);
            fold
        }
    };
    // In printable lowercase ASCII a byte scan finds where the token pass's first change can
    // be, far cheaper than the pass: it runs from there, or not at all.
    let done = match shape {
        CharShape::Unicode => token_pass(src, 0, out),
        _ => match tokens_unchanged(src.as_bytes()) {
            Ok(n) => Some(n),
            Err(from) => token_pass(src, from, out),
        },
    };
    match done {
        Some(n) if shape == CharShape::Simple => Normalized::Text(n),
        Some(n) => Normalized::Fold(n),
        None => Normalized::Out,
    }
}

/// What the character pass has to do with a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CharShape {
    /// Printable lowercase ASCII: nothing.
    Simple,
    /// ASCII with capitals or control characters: fold byte by byte.
    Ascii,
    /// Non-ASCII: the char-level pass.
    Unicode,
}

/// One pass over `text` in fixed-size chunks, each reduced without branches.
fn char_shape(text: &[u8]) -> CharShape {
    let mut fold = 0u8;
    for chunk in text.chunks(64) {
        let (mut high, mut f) = (0u8, 0u8);
        for &b in chunk {
            high |= b;
            f |= u8::from(needs_ascii_fold(b));
        }
        if high >= 0x80 {
            return CharShape::Unicode;
        }
        fold |= f;
    }
    if fold == 0 {
        CharShape::Simple
    } else {
        CharShape::Ascii
    }
}

/// An ASCII byte the character pass changes: a capital, a control character or DEL.
#[inline(always)]
fn needs_ascii_fold(b: u8) -> bool {
    b.wrapping_sub(b'A') < 26 || b < 0x20 || b == 0x7f
}

/// The character pass on one ASCII byte, without branches: controls and DEL to a space,
/// capitals to lowercase.
#[inline(always)]
fn fold_ascii_byte(b: u8) -> u8 {
    let upper = u8::from(b.wrapping_sub(b'A') < 26);
    if b < 0x20 || b == 0x7f {
        b' '
    } else {
        b | (upper << 5)
    }
}

/// Where the token pass may change printable lowercase ASCII (`s` after the character
/// pass). `Ok(n)`: nowhere; its result is `s[..n]`, `s` without trailing spaces. Every token is
/// then plain (`token_is_plain`), with no double or leading space, no contraction tail after
/// its head and no run of three single letters. `Err(from)`: a token start before the first
/// token that breaks that, from which `token_pass` gives the same result as from the start.
fn tokens_unchanged(s: &[u8]) -> Result<usize, usize> {
    let mut end = s.len();
    while end > 0 && s[end - 1] == b' ' {
        end -= 1;
    }
    let s = &s[..end];
    let mut prev: &[u8] = &[];
    let mut prev_start = 0;
    // Single letters just before this token, and where they start.
    let mut letters = 0;
    let mut letters_start = 0;
    let mut start = 0;
    while start < s.len() {
        let mut i = start;
        let mut class = 0u8;
        while i < s.len() && s[i] != b' ' {
            class |= BYTE_CLASS[s[i] as usize];
            i += 1;
        }
        let tok = &s[start..i];
        let single_letter = tok.len() == 1 && class == LETTER;
        if tok.is_empty()
            || !token_is_plain(tok, class)
            || (may_be_tail(tok) && split_contraction(prev, tok))
            || (single_letter && letters == 2)
        {
            // Resume at the token before (the contraction head), or before the single letters
            // (a run is judged from its first letter). The tokens before that are plain and
            // join nothing, so the pass, from there, sees what it would have seen.
            return Err(if letters > 0 {
                letters_start
            } else {
                prev_start
            });
        }
        if single_letter {
            if letters == 0 {
                letters_start = start;
            }
            letters += 1;
        } else {
            letters = 0;
        }
        prev = tok;
        prev_start = start;
        start = i + 1;
    }
    Ok(end)
}

/// Character pass: compatibility folding, lowercasing, stripping, whitespace mapping.
fn fold_chars(text: &str, scratch: &mut String, out: &mut String) {
    out.clear();
    out.reserve(text.len() + 8);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii() {
            out.push(char::from(fold_ascii_byte(b)));
            i += 1;
            continue;
        }
        // A run of non-ASCII chars goes through NFKD, filtering and NFC together so that
        // composition sees whole combining sequences; ASCII around it never composes.
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii() {
            i += 1;
        }
        fold_unicode_run(&text[start..i], scratch, out);
    }
}

fn fold_unicode_run(run: &str, scratch: &mut String, out: &mut String) {
    // Most non-ASCII text (quotes, dashes, Cyrillic, CJK, Devanagari) is already
    // NFKC-stable char by char: then lowercasing and mapping is all there is to do.
    if run.chars().all(is_nfkc_stable) {
        for c in run.chars() {
            for lc in c.to_lowercase() {
                if let Some(mapped) = map_char(lc) {
                    out.push(mapped);
                }
            }
        }
        return;
    }
    scratch.clear();
    for c in run.nfkd() {
        for lc in c.to_lowercase() {
            if let Some(mapped) = map_char(lc) {
                scratch.push(mapped);
            }
        }
    }
    out.extend(scratch.nfc());
}

/// A char that NFKD leaves alone and that cannot combine with its neighbours.
fn is_nfkc_stable(c: char) -> bool {
    if is_combining_mark(c) {
        return false;
    }
    let mut n = 0;
    let mut same = true;
    decompose_compatible(c, |d| {
        n += 1;
        same &= d == c;
    });
    n == 1 && same && !(0x1100..=0x11ff).contains(&(c as u32))
}

/// Per-char mapping after decomposition: `None` drops the char.
fn map_char(c: char) -> Option<char> {
    if is_stripped(c) {
        return None;
    }
    if c.is_whitespace() || c.is_control() {
        return Some(' ');
    }
    Some(match c {
        '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' | '\u{2032}' | '\u{02bc}'
        | '\u{02b9}' | '\u{00b4}' | '\u{0060}' => '\'',
        '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' | '\u{2033}' | '\u{00ab}'
        | '\u{00bb}' => '"',
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{2043}' => '-',
        '\u{0131}' => 'i',
        '\u{0251}' => 'a',
        '\u{0261}' => 'g',
        '\u{00df}' => 's',
        _ => c,
    })
}

/// Format characters, invisible fillers and diacritic marks that carry no matchable content.
fn is_stripped(c: char) -> bool {
    let cp = c as u32;
    matches!(
        cp,
        0x00ad
            | 0x034f
            | 0x061c
            | 0x0640
            | 0x115f
            | 0x1160
            | 0x17b4
            | 0x17b5
            | 0x180b..=0x180f
            | 0x200b..=0x200f
            | 0x202a..=0x202e
            | 0x2060..=0x2064
            | 0x2066..=0x206f
            | 0x3164
            | 0xfe00..=0xfe0f
            | 0xfeff
            | 0xffa0
            | 0xfff9..=0xfffb
            | 0x1d173..=0x1d17a
            | 0xe0000..=0xe007f
            | 0xe0100..=0xe01ef
    ) || (is_diacritic_range(cp) && canonical_combining_class(c) != 0)
        || matches!(cp, 0x0483..=0x0489 | 0x064b..=0x065f | 0x0670)
}

/// Latin/Greek/Cyrillic combining diacritics (accents, zalgo stacks) and Arabic harakat.
fn is_diacritic_range(cp: u32) -> bool {
    matches!(
        cp,
        0x0300..=0x036f | 0x1ab0..=0x1aff | 0x1dc0..=0x1dff | 0x20d0..=0x20ff | 0xfe20..=0xfe2f
    )
}

/// Cyrillic and Greek letters that render like a Latin letter.
fn confusable(c: char) -> Option<char> {
    Some(match c {
        'а' => 'a',
        'в' => 'b',
        'е' => 'e',
        'һ' => 'h',
        'н' => 'h',
        'і' => 'i',
        'ј' => 'j',
        'к' => 'k',
        'м' => 'm',
        'о' => 'o',
        'р' => 'p',
        'ԛ' => 'q',
        'ѕ' => 's',
        'с' => 'c',
        'т' => 't',
        'у' => 'y',
        'ԝ' => 'w',
        'х' => 'x',
        'ԁ' => 'd',
        'α' => 'a',
        'ε' => 'e',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        'ϲ' => 'c',
        _ => return None,
    })
}

fn leet(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '@' => 'a',
        '$' => 's',
        '!' => 'i',
        _ => return None,
    })
}

/// Suffixes after a leading number that make it a quantity, not leetspeak ("1st", "5kg").
const NUMBER_SUFFIXES: &[&str] = &[
    "st", "nd", "rd", "th", "s", "k", "m", "g", "d", "h", "x", "am", "pm", "px", "kb", "mb", "gb",
    "tb", "hz", "fps", "p", "kg", "km", "cm", "mm", "ml", "lb", "lbs", "yo", "min", "ms", "v", "w",
];

/// Token pass: rejoins spaced letters and contractions, maps leetspeak, homoglyphs and
/// dotted letters, collapses spaces. Returns `Some(n)` when the result is `s[..n]` (nothing
/// changed but trailing spaces), else `None` with the result in `out`. It starts at byte
/// `from`, a token start (0, or one from `tokens_unchanged`) before which it would change
/// nothing.
fn token_pass(s: &str, from: usize, out: &mut String) -> Option<usize> {
    // Before `from` comes `s[..from - 1]` unchanged, then the space before its token.
    let mut out = Sink::new(s, from.saturating_sub(1), out);
    let mut prev: Option<&str> = None;
    let mut it = SpaceSplit::new(s, from);
    // One token of lookahead, scanned once: `next` is what `it.clone().next()` would give.
    let mut next = it.next_classed();
    while let Some((tok, class)) = next {
        next = it.next_classed();
        if tok.is_empty() {
            continue;
        }
        // Contractions split by a stripped apostrophe ("i m", "don t") are rejoined first,
        // so "i m a" is not taken for spaced-out letters.
        if prev.is_some_and(|p| {
            may_be_tail(tok.as_bytes()) && split_contraction(p.as_bytes(), tok.as_bytes())
        }) {
            out.push_str(tok);
            prev = None;
            continue;
        }
        prev = Some(tok);
        let joins_next = next.is_some_and(|(n, _)| {
            may_be_tail(n.as_bytes()) && split_contraction(tok.as_bytes(), n.as_bytes())
        });
        // Lookahead: an empty token (double space) ends a run.
        let run = if !joins_next && is_single_letter(tok) {
            1 + next
                .map(|(n, _)| n)
                .into_iter()
                .chain(it.clone())
                .take_while(|t| is_single_letter(t))
                .count()
        } else {
            0
        };
        if !out.is_empty() {
            out.push_space();
        }
        if run >= 3 {
            out.push_str(tok);
            for _ in 1..run {
                if let Some((t, _)) = next {
                    out.push_str(t);
                    next = it.next_classed();
                }
            }
        } else if token_is_plain(tok.as_bytes(), class) {
            out.push_str(tok);
        } else {
            push_token(tok, &mut out);
        }
    }
    out.finish()
}

/// The token pass's output, written lazily: while it equals a prefix of the source, only its
/// length is tracked; the first difference copies that prefix to the buffer and continues
/// there. So text that is already normal is never copied.
struct Sink<'a> {
    src: &'a str,
    /// Length of the source prefix the output equals, while `clean`.
    len: usize,
    clean: bool,
    buf: &'a mut String,
}

impl<'a> Sink<'a> {
    fn new(src: &'a str, len: usize, buf: &'a mut String) -> Self {
        Sink {
            src,
            len,
            clean: true,
            buf,
        }
    }

    fn is_empty(&self) -> bool {
        if self.clean {
            self.len == 0
        } else {
            self.buf.is_empty()
        }
    }

    #[inline]
    fn push_space(&mut self) {
        if self.clean && self.src.as_bytes().get(self.len) == Some(&b' ') {
            self.len += 1;
        } else {
            self.push(' ');
        }
    }

    #[inline(always)]
    fn push_str(&mut self, t: &str) {
        if self.clean {
            let rest = &self.src.as_bytes()[self.len..];
            // Tokens are slices of the source: in step, they start right where we are.
            if (std::ptr::eq(rest.as_ptr(), t.as_ptr()) && t.len() <= rest.len())
                || rest.starts_with(t.as_bytes())
            {
                self.len += t.len();
                return;
            }
            self.spill();
        }
        self.buf.push_str(t);
    }

    fn push(&mut self, c: char) {
        if self.clean {
            let mut b = [0u8; 4];
            let e = c.encode_utf8(&mut b);
            if self.src.as_bytes()[self.len..].starts_with(e.as_bytes()) {
                self.len += e.len();
                return;
            }
            self.spill();
        }
        self.buf.push(c);
    }

    fn spill(&mut self) {
        self.clean = false;
        self.buf.clear();
        self.buf.push_str(&self.src[..self.len]);
    }

    fn finish(self) -> Option<usize> {
        self.clean.then_some(self.len)
    }
}

/// `str::split(' ')` without the per-call memchr setup, which dominates on short words.
#[derive(Clone)]
struct SpaceSplit<'a> {
    s: &'a str,
    pos: usize,
    done: bool,
}

impl<'a> SpaceSplit<'a> {
    fn new(s: &'a str, pos: usize) -> Self {
        SpaceSplit {
            s,
            pos,
            done: false,
        }
    }

    /// The next token and the union of its bytes' `BYTE_CLASS`.
    #[inline]
    fn next_classed(&mut self) -> Option<(&'a str, u8)> {
        if self.done {
            return None;
        }
        let bytes = self.s.as_bytes();
        let start = self.pos;
        let mut i = start;
        let mut class = 0u8;
        while i < bytes.len() && bytes[i] != b' ' {
            class |= BYTE_CLASS[bytes[i] as usize];
            i += 1;
        }
        if i >= bytes.len() {
            self.done = true;
        } else {
            self.pos = i + 1;
        }
        // Splitting at an ASCII space always lands on char boundaries.
        Some((&self.s[start..i], class))
    }
}

impl<'a> Iterator for SpaceSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.next_classed().map(|(t, _)| t)
    }
}

/// `token_is_plain`'s byte classes: a lowercase ASCII letter, a leet digit or symbol, or a
/// byte that is never plain (apostrophe, non-ASCII).
const LETTER: u8 = 1;
const LEETISH: u8 = 2;
const NEVER_PLAIN: u8 = 4;
const BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = match b as u8 {
            b'a'..=b'z' => LETTER,
            b'0' | b'1' | b'3' | b'4' | b'5' | b'7' | b'@' | b'$' | b'!' => LEETISH,
            b'\'' | 0x80..=0xff => NEVER_PLAIN,
            _ => 0,
        };
        b += 1;
    }
    t
};

/// Byte-level shortcut: ASCII tokens with no leet mix, apostrophe or dotted letters are
/// left unchanged by `push_token`, so they skip the char-level work. `class` is the union of
/// the token's `BYTE_CLASS`.
fn token_is_plain(b: &[u8], class: u8) -> bool {
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && matches!(b[1], b'.' | b'-' | b'_' | b'*') {
        return false;
    }
    class & NEVER_PLAIN == 0 && (class & (LETTER | LEETISH)) != (LETTER | LEETISH)
}

/// Cheap test before `split_contraction`: every tail it accepts is one or two bytes and
/// starts with one of these letters.
#[inline(always)]
fn may_be_tail(next: &[u8]) -> bool {
    next.len() <= 2
        && matches!(
            next.first(),
            Some(b'm' | b'v' | b'l' | b'd' | b'r' | b's' | b't')
        )
}

/// Whether `next` is the tail of a contraction whose apostrophe was lost ("i m", "don t").
fn split_contraction(prev: &[u8], next: &[u8]) -> bool {
    match next {
        b"m" => prev == b"i",
        b"ve" | b"ll" | b"d" => matches!(
            prev,
            b"i" | b"you" | b"we" | b"they" | b"he" | b"she" | b"it" | b"that" | b"who"
        ),
        b"re" => matches!(prev, b"you" | b"we" | b"they" | b"who" | b"what"),
        b"s" => matches!(
            prev,
            b"it"
                | b"that"
                | b"he"
                | b"she"
                | b"there"
                | b"what"
                | b"who"
                | b"let"
                | b"here"
                | b"where"
        ),
        b"t" => matches!(
            prev,
            b"don"
                | b"can"
                | b"won"
                | b"isn"
                | b"didn"
                | b"doesn"
                | b"couldn"
                | b"wouldn"
                | b"shouldn"
                | b"aren"
                | b"wasn"
                | b"weren"
                | b"haven"
                | b"hasn"
                | b"ain"
                | b"hadn"
                | b"mustn"
        ),
        _ => false,
    }
}

fn is_single_letter(tok: &str) -> bool {
    let mut chars = tok.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if c.is_alphabetic())
}

/// Word characters inside a token: letters, digits, leet symbols and inner apostrophes.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '@' | '$' | '!' | '\'')
}

/// Splits off the next maximal run of word characters.
fn next_word(s: &str) -> Option<(&str, &str)> {
    let start = s.find(is_word_char)?;
    let tail = &s[start..];
    let len = tail.find(|c| !is_word_char(c)).unwrap_or(tail.len());
    Some((&tail[..len], &tail[len..]))
}

/// "k.i.l.l", "k-i-l-l", "k_i_l_l", "k*i*l*l": at least three single letters, one separator.
/// Returns the letters-and-separators core, the separator, and the punctuation after it.
fn dotted_letters(tok: &str) -> Option<(&str, char, &str)> {
    let core_len = tok
        .trim_end_matches(['.', ',', '!', '?', ';', ':', ')', '"'])
        .len();
    let (core, tail) = tok.split_at(core_len);
    let mut chars = core.chars();
    let first = chars.next()?;
    let sep = chars.next()?;
    if !first.is_alphabetic() || !matches!(sep, '.' | '-' | '_' | '*') {
        return None;
    }
    let mut letters = 1;
    let mut expect_letter = true;
    for c in chars {
        if expect_letter {
            if !c.is_alphabetic() {
                return None;
            }
            letters += 1;
        } else if c != sep {
            return None;
        }
        expect_letter = !expect_letter;
    }
    // The core ends on a letter ("k.i.l.l"); a trailing "." of "u.s.a." is in `tail`.
    (letters >= 3 && !expect_letter).then_some((core, sep, tail.strip_prefix(sep).unwrap_or(tail)))
}

fn push_token(tok: &str, out: &mut Sink<'_>) {
    if let Some((core, sep, tail)) = dotted_letters(tok) {
        for c in core.chars().filter(|&c| c != sep) {
            out.push(c);
        }
        out.push_str(tail);
        return;
    }
    let mut rest = tok;
    while let Some((word, after)) = next_word(rest) {
        let gap = &rest[..rest.len() - word.len() - after.len()];
        out.push_str(gap);
        push_word(word, out);
        rest = after;
    }
    out.push_str(rest);
}

#[derive(Default)]
struct WordShape {
    ascii_letters: usize,
    other_letters: usize,
    confusables: usize,
    leet_digits: usize,
    other_digits: usize,
    symbols: usize,
    apostrophes: usize,
}

fn shape(word: &str) -> WordShape {
    let mut s = WordShape::default();
    for c in word.chars() {
        match c {
            'a'..='z' => s.ascii_letters += 1,
            '0' | '1' | '3' | '4' | '5' | '7' => s.leet_digits += 1,
            '0'..='9' => s.other_digits += 1,
            '@' | '$' | '!' => s.symbols += 1,
            '\'' => s.apostrophes += 1,
            _ if confusable(c).is_some() => s.confusables += 1,
            _ if c.is_alphanumeric() => s.other_letters += 1,
            _ => {}
        }
    }
    s
}

/// Confusables are mapped inside words that already hold Latin letters, or consist of them only.
fn map_confusables(s: &WordShape) -> bool {
    s.confusables > 0 && (s.ascii_letters > 0 || s.other_letters == 0)
}

/// Leetspeak applies to words mixing letters with leet digits or symbols, never to quantities.
fn map_leet(word: &str, s: &WordShape) -> bool {
    if s.leet_digits + s.symbols == 0 || s.other_digits > 0 {
        return false;
    }
    if s.ascii_letters + s.confusables == 0 {
        return false;
    }
    let digits_end = word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(word.len());
    if digits_end > 0 && NUMBER_SUFFIXES.contains(&&word[digits_end..]) {
        return false;
    }
    // An '@' or '!' at an edge is punctuation, not leet.
    s.leet_digits > 0 || word.char_indices().any(|(i, c)| leet_symbol_at(word, i, c))
}

fn leet_symbol_at(word: &str, i: usize, c: char) -> bool {
    let prev = word[..i].chars().next_back();
    let next = word[i + c.len_utf8()..].chars().next();
    let letter = |o: Option<char>| o.is_some_and(|p| p.is_alphanumeric() || leet(p).is_some());
    match c {
        '$' => letter(prev) || letter(next),
        '@' | '!' => letter(prev) && letter(next),
        _ => false,
    }
}

fn inner_apostrophe(word: &str, s: &WordShape) -> bool {
    s.apostrophes > 0
        && word.char_indices().any(|(i, c)| {
            c == '\''
                && word[..i]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_alphanumeric)
                && word[i + 1..]
                    .chars()
                    .next()
                    .is_some_and(char::is_alphanumeric)
        })
}

fn push_word(word: &str, out: &mut Sink<'_>) {
    let s = shape(word);
    let conf = map_confusables(&s);
    let lt = map_leet(word, &s);
    if !conf && !lt && !inner_apostrophe(word, &s) {
        out.push_str(word);
        return;
    }
    let mut prev: Option<char> = None;
    let mut iter = word.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let next = iter.peek().map(|&(_, n)| n);
        let before = prev.replace(c);
        if c == '\'' {
            // Inner apostrophes vanish ("don't" -> "dont"); edge ones stay as punctuation.
            let inner = before.is_some_and(char::is_alphanumeric)
                && next.is_some_and(char::is_alphanumeric);
            if !inner {
                out.push(c);
            }
            continue;
        }
        if conf && let Some(m) = confusable(c) {
            out.push(m);
            continue;
        }
        if lt && let Some(m) = leet(c) {
            let is_symbol = matches!(c, '@' | '$' | '!');
            if !is_symbol || leet_symbol_at(word, i, c) {
                out.push(m);
                continue;
            }
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Texts dense in what the token pass changes: single letters, contraction heads and
    /// tails, leet digits and symbols, apostrophes, dotted letters, double and edge spaces.
    fn tricky_ascii() -> impl Strategy<Value = String> {
        // Mostly plain tokens, so that whole texts often pass the shortcut's token tests and
        // its single-letter, contraction and space rules decide.
        let plain = prop::sample::select(vec![
            "a", "i", "m", "s", "t", "d", "k", "ve", "re", "ll", "don", "it", "you", "hello",
            "911", "ok.", "-", "?",
        ]);
        let tricky = prop::sample::select(vec![
            "b0mb", "h@te", "wow!", "a$$", "1st", "5kg", "don't", "k.i.l.l", "x-ray", "e.g.",
            "u*s", "b_", "4", "@", "$", "!", "'", "",
        ]);
        let piece = prop_oneof![8 => plain, 1 => tricky];
        let sep = prop_oneof![8 => Just(" "), 1 => Just("  ")];
        prop::collection::vec((piece, sep), 0..10)
            .prop_map(|v| v.into_iter().flat_map(|(p, sep)| [p, sep]).collect())
    }

    fn pass_from(s: &str, from: usize) -> String {
        let mut out = String::new();
        match token_pass(s, from, &mut out) {
            Some(n) => s[..n].to_string(),
            None => out,
        }
    }

    proptest! {
        /// The shortcut never claims a text the token pass would change, claims the length
        /// the pass returns, and resumes the pass where it gives the whole pass's result.
        #[test]
        fn tokens_unchanged_agrees_with_the_token_pass(s in tricky_ascii()) {
            match tokens_unchanged(s.as_bytes()) {
                Ok(n) => prop_assert_eq!(token_pass(&s, 0, &mut String::new()), Some(n), "{:?}", s),
                Err(from) => {
                    prop_assert!(from == 0 || s.as_bytes()[from - 1] == b' ', "{:?} {}", s, from);
                    prop_assert_eq!(pass_from(&s, from), pass_from(&s, 0), "{:?} from {}", s, from);
                }
            }
        }

        /// The character pass's byte shortcut folds exactly as the char-level pass.
        #[test]
        fn ascii_fold_matches_the_char_pass(bytes in prop::collection::vec(0u8..0x80, 0..64)) {
            let text = String::from_utf8(bytes).unwrap();
            let mut folded = String::new();
            fold_chars(&text, &mut String::new(), &mut folded);
            let bytewise: String = text.bytes().map(|b| char::from(fold_ascii_byte(b))).collect();
            prop_assert_eq!(&folded, &bytewise);
            let simple = !text.bytes().any(needs_ascii_fold);
            prop_assert_eq!(simple, folded == text);
            prop_assert_eq!(char_shape(text.as_bytes()) == CharShape::Simple, simple);
        }
    }

    #[test]
    fn the_shortcut_takes_ordinary_text_and_leaves_the_rest() {
        let plain = "how do i kill a python process? it hangs, so i want it gone.  ";
        assert_eq!(
            tokens_unchanged(plain.as_bytes()),
            Ok(plain.trim_end().len())
        );
        // Resumed at the contraction head, before the single letters, or at the token before.
        for (changed, from) in [
            ("a b c", 0),
            ("xy i m here", 3),
            ("ok so don t", 6),
            ("two  spaces", 0),
            (" lead", 0),
            ("it is l33t", 3),
            ("go k.i.l.l", 0),
            ("go do a b c", 6),
        ] {
            assert_eq!(
                tokens_unchanged(changed.as_bytes()),
                Err(from),
                "{changed:?}"
            );
        }
        assert_eq!(char_shape("caf\u{e9}".as_bytes()), CharShape::Unicode);
        assert_eq!(char_shape(&[b'a'; 200]), CharShape::Simple);
        let mut long = vec![b'a'; 200];
        long[130] = b'Q';
        assert_eq!(char_shape(&long), CharShape::Ascii);
    }
}
