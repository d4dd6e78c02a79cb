//! Final-answer extraction and the majority vote over candidates.
//!
//! An answer is, in order of preference: the first capture group (or whole match) of a
//! user regex, the last `\boxed{…}`, the phrase after the last "answer is", or the last
//! number. Answers are compared after [`normalize`]. The rules are a spec shared with the
//! training reward (tools/train/common.py): both test suites read the same table,
//! tests/fixtures/spec/answers.json.

use std::collections::HashMap;
use std::sync::LazyLock;

// Literal patterns: a typo fails every vote test, never a user's input.
#[expect(clippy::unwrap_used, reason = "a literal pattern")]
static ANSWER_IS: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"(?i)answer is").unwrap());
#[expect(clippy::unwrap_used, reason = "a literal pattern")]
static NUMBER: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?").unwrap());
#[expect(clippy::unwrap_used, reason = "a literal pattern")]
static ARTICLE: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^(the|a|an)\s+").unwrap());
#[expect(clippy::unwrap_used, reason = "a literal pattern")]
static TEXT: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"\\text\{([^}]*)\}").unwrap());
#[expect(clippy::unwrap_used, reason = "a literal pattern")]
static SPACES: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(r"\s+").unwrap());

/// The final answer in `text`, if any.
pub fn extract_answer(text: &str, user_regex: Option<&regex::Regex>) -> Option<String> {
    if let Some(re) = user_regex {
        let caps = re.captures_iter(text).last()?;
        return Some(caps.get(1).or_else(|| caps.get(0))?.as_str().to_string());
    }
    if let Some(b) = last_boxed(text) {
        return Some(b);
    }
    if let Some(m) = ANSWER_IS.find_iter(text).last() {
        let rest = text[m.end()..].trim_start_matches([':', ' ']);
        // The phrase: up to the end of its line or sentence.
        let mut end = rest.find('\n').unwrap_or(rest.len());
        for stop in [". ", "! ", "? ", ", ", "; "] {
            end = end.min(rest.find(stop).unwrap_or(end));
        }
        let ans = rest[..end].trim().trim_end_matches(['.', ':']).trim();
        if !ans.is_empty() {
            return Some(ans.to_string());
        }
    }
    NUMBER
        .find_iter(text)
        .last()
        .map(|m| m.as_str().to_string())
}

/// Contents of the last `\boxed{...}` (braces balanced).
fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, ch) in text[start..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// Canonical form for comparing answers: trimmed, no `$`, no trailing period, lower case,
/// `\text{x}` → `x`, no leading article, single spaces, and numbers without thousands
/// separators in their shortest form (`12.0` → `12`).
pub fn normalize(answer: &str) -> String {
    let a = answer
        .trim()
        .trim_end_matches('.')
        .trim()
        .trim_matches('$')
        .trim()
        .trim_end_matches('.')
        .trim()
        .to_lowercase();
    let a = TEXT.replace_all(&a, "$1");
    let a = ARTICLE.replace(&a, "");
    let a = SPACES.replace_all(&a, " ").into_owned();
    let no_commas: String = a.chars().filter(|&c| c != ',').collect();
    match no_commas.parse::<f64>() {
        Ok(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
        Ok(v) if v.is_finite() => format!("{v}"),
        _ => a,
    }
}

/// Majority vote: each distinct normalized answer scores the sum of its candidates'
/// weights (1 each for a plain majority; the verifier's scores later). Ties go to the
/// answer seen first. Returns the winner and every (answer, score), best first.
pub fn vote(answers: &[Option<String>], weights: &[f32]) -> (Option<String>, Vec<(String, f32)>) {
    let mut scores: HashMap<String, (f32, usize)> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        if let Some(a) = a {
            let e = scores.entry(normalize(a)).or_insert((0.0, i));
            e.0 += weights.get(i).copied().unwrap_or(1.0);
        }
    }
    let mut ranked: Vec<(String, (f32, usize))> = scores.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
    let winner = ranked.first().map(|r| r.0.clone());
    (
        winner,
        ranked.into_iter().map(|(a, (s, _))| (a, s)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_prefers_boxed_then_answer_is_then_last_number() {
        assert_eq!(
            extract_answer("so 3+4 = 7, thus \\boxed{\\frac{1}{2}} ok", None).as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract_answer("First 12, then 13. The answer is 391.\nDone 5", None).as_deref(),
            Some("391")
        );
        assert_eq!(
            extract_answer("17 * 23 = 391", None).as_deref(),
            Some("391")
        );
        assert_eq!(extract_answer("no digits here", None), None);
        let re = regex::Regex::new(r"ANSWER: (\w+)").unwrap();
        assert_eq!(
            extract_answer("ANSWER: foo ... ANSWER: bar", Some(&re)).as_deref(),
            Some("bar")
        );
    }

    #[test]
    fn the_answer_spec_shared_with_the_training_reward() {
        // tools/train/tests/test_reward.py checks common.py against the same table.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/spec/answers.json"
        );
        let table: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let got = extract_answer(text, None);
            assert_eq!(
                got.as_deref(),
                c["answer"].as_str(),
                "extract from {text:?}"
            );
            if let Some(a) = got {
                assert_eq!(
                    Some(normalize(&a).as_str()),
                    c["normalized"].as_str(),
                    "{a:?}"
                );
            }
        }
    }

    #[test]
    fn normalization_merges_equal_numbers() {
        assert_eq!(normalize(" $1,234.0$. "), "1234");
        assert_eq!(normalize("\\text{Paris}"), "paris");
        assert_eq!(normalize("0.50"), "0.5");
    }

    #[test]
    fn majority_and_weighted_votes() {
        let a = |s: &str| Some(s.to_string());
        let answers = vec![a("391"), a("381"), a("391.0"), None, a("381")];
        let (w, ranked) = vote(&answers, &[1.0; 5]);
        // 391 and 381 tie 2-2: the first seen (391) wins.
        assert_eq!(w.as_deref(), Some("391"));
        assert_eq!(ranked.len(), 2);
        let (w, _) = vote(&answers, &[0.1, 0.9, 0.1, 1.0, 0.9]);
        assert_eq!(w.as_deref(), Some("381"));
        assert_eq!(vote(&[None, None], &[1.0, 1.0]).0, None);
    }
}
