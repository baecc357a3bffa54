//! Prompt fingerprints: what Cordon keeps of a raw prompt instead of the text.
//!
//! When an event carries `prompt`, the decoder derives the three fingerprints of event schema v1
//! (unless the gateway already sent them) and drops the text. The functions are stable: the same
//! prompt gives the same fingerprints in every version, so rules and backtests stay comparable.
//!
//! - `prompt_fp`: xxh3-64 of the normalized prompt (lowercased, whitespace collapsed).
//! - `template_fp`: xxh3-64 of the prompt's skeleton: numbers, quoted spans, e-mail addresses and
//!   URLs masked, so prompts generated from one template share it.
//! - `prompt_simhash`: 64-bit SimHash of the normalized prompt's word 3-shingles, so near
//!   duplicates differ in few bits.

use xxhash_rust::xxh3::xxh3_64;

/// Lowercases and collapses whitespace.
pub fn normalize(prompt: &str) -> String {
    let mut out = String::with_capacity(prompt.len());
    for word in prompt.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The skeleton of a prompt: normalized, with variable parts masked.
pub fn skeleton(prompt: &str) -> String {
    let norm = normalize(prompt);
    let mut out = String::with_capacity(norm.len());
    let mut chars = norm.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' | '\u{201c}' | '\u{2018}' => {
                let close = match c {
                    '\u{201c}' => '\u{201d}',
                    '\u{2018}' => '\u{2019}',
                    c => c,
                };
                // Mask up to the closing quote; an unclosed quote masks the rest.
                for n in chars.by_ref() {
                    if n == close {
                        break;
                    }
                }
                out.push_str("<q>");
            }
            c if c.is_ascii_digit() => {
                while chars
                    .peek()
                    .is_some_and(|n| n.is_ascii_digit() || *n == '.' || *n == ',')
                {
                    chars.next();
                }
                out.push_str("<n>");
            }
            c => out.push(c),
        }
    }
    // Mask words that look like addresses or links.
    out.split(' ')
        .map(|w| {
            if w.contains("://") || w.starts_with("www.") {
                "<url>"
            } else if w.contains('@') && w.contains('.') {
                "<email>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// SimHash of the word 3-shingles of the normalized prompt.
pub fn simhash(prompt: &str) -> u64 {
    let norm = normalize(prompt);
    let words: Vec<&str> = norm.split(' ').filter(|w| !w.is_empty()).collect();
    let mut weights = [0i32; 64];
    let mut add = |h: u64| {
        for (bit, w) in weights.iter_mut().enumerate() {
            if h >> bit & 1 == 1 {
                *w += 1;
            } else {
                *w -= 1;
            }
        }
    };
    if words.len() < 3 {
        add(xxh3_64(norm.as_bytes()));
    } else {
        for shingle in words.windows(3) {
            add(xxh3_64(shingle.join(" ").as_bytes()));
        }
    }
    weights.iter().enumerate().fold(
        0u64,
        |acc, (bit, w)| if *w > 0 { acc | 1 << bit } else { acc },
    )
}

/// The three fingerprints of a prompt, as 16 lowercase hex digits each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    /// Fingerprint of the normalized prompt.
    pub prompt_fp: String,
    /// Fingerprint of the prompt's skeleton.
    pub template_fp: String,
    /// SimHash of the prompt.
    pub prompt_simhash: String,
}

/// Derives the fingerprints of a raw prompt.
pub fn fingerprints(prompt: &str) -> Fingerprints {
    Fingerprints {
        prompt_fp: format!("{:016x}", xxh3_64(normalize(prompt).as_bytes())),
        template_fp: format!("{:016x}", xxh3_64(skeleton(prompt).as_bytes())),
        prompt_simhash: format!("{:016x}", simhash(prompt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_prompt_modulo_case_and_spacing_has_one_fingerprint() {
        let a = fingerprints("Explain  step by step\nwhy the sky is blue");
        let b = fingerprints("explain step by step why the SKY is blue");
        assert_eq!(a.prompt_fp, b.prompt_fp);
        assert_eq!(a.prompt_fp.len(), 16);
    }

    #[test]
    fn templates_mask_variable_parts() {
        let a = fingerprints(
            "Solve problem 17: \"x + 3 = 5\". Show your reasoning. Mail bob@example.com",
        );
        let b = fingerprints(
            "Solve problem 942: \"y * 2 = 8\". Show your reasoning. Mail eve@example.org",
        );
        assert_ne!(a.prompt_fp, b.prompt_fp);
        assert_eq!(a.template_fp, b.template_fp);
        let c = fingerprints("Write a poem about problem 17");
        assert_ne!(a.template_fp, c.template_fp);
    }

    #[test]
    fn simhash_of_near_duplicates_is_close() {
        let base = "please translate the following paragraph about the history of the roman empire into french and keep the tone formal";
        let near = "please translate the following paragraph about the history of the roman empire into german and keep the tone formal";
        let far = "write a rust function that parses json with serde and returns a typed error on failure";
        let d_near = (simhash(base) ^ simhash(near)).count_ones();
        let d_far = (simhash(base) ^ simhash(far)).count_ones();
        assert!(d_near < d_far, "near {d_near} far {d_far}");
        assert!(d_near <= 16, "near {d_near}");
    }
}
