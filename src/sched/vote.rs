//! Final-answer extraction and the majority vote over candidates.
//!
//! An answer is, in order of preference: the first capture group (or whole match) of a
//! user regex, the last `\boxed{…}`, the text after the last "answer is", or the last
//! number. Answers are compared after [`normalize`].

use std::collections::HashMap;

/// The final answer in `text`, if any.
pub fn extract_answer(text: &str, user_regex: Option<&regex::Regex>) -> Option<String> {
    if let Some(re) = user_regex {
        let caps = re.captures_iter(text).last()?;
        return Some(caps.get(1).or_else(|| caps.get(0))?.as_str().to_string());
    }
    if let Some(b) = last_boxed(text) {
        return Some(b);
    }
    let lower = text.to_lowercase();
    if let Some(i) = lower.rfind("answer is") {
        let rest = text[i + "answer is".len()..].trim_start_matches([':', ' ']);
        let end = rest.find(['\n']).unwrap_or(rest.len());
        let ans = rest[..end].trim().trim_end_matches('.');
        if !ans.is_empty() {
            return Some(ans.to_string());
        }
    }
    let num = regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?").unwrap();
    num.find_iter(text).last().map(|m| m.as_str().to_string())
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

/// Canonical form for comparing answers: trimmed, lower case, no `$`, no trailing period,
/// no thousands separators, `12.0` → `12`.
pub fn normalize(answer: &str) -> String {
    let mut a = answer
        .trim()
        .trim_end_matches('.')
        .trim_matches('$')
        .trim()
        .trim_end_matches('.')
        .to_lowercase();
    if let Some(inner) = a.strip_prefix("\\text{").and_then(|s| s.strip_suffix('}')) {
        a = inner.to_string();
    }
    let no_commas: String = a.chars().filter(|&c| c != ',').collect();
    if let Ok(v) = no_commas.parse::<f64>() {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            return format!("{}", v as i64);
        }
        return format!("{v}");
    }
    a
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
