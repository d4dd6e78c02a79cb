//! Hugging Face chat templates (Jinja) rendered with minijinja.
//!
//! Set up like transformers' renderer: `trim_blocks` and `lstrip_blocks` on, Python
//! string/dict/list methods (`.strip()`, `.items()`, ...) through minijinja-contrib's
//! pycompat callback, and the `raise_exception` / `strftime_now` globals templates use.

use anyhow::Context;
use minijinja::{context, Environment, Error, ErrorKind};

/// One chat turn.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Instructions one render may execute (minijinja's fuel).
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compile a template's source (errors name the template line).
    pub fn new(source: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Templates come with model files from strangers: a render is bounded (real ones
        // take ~100 instructions a message), so a looping template errors instead of hanging.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("chat template: {msg}"),
            ))
        });
        env.add_function("strftime_now", |fmt: String| strftime(&fmt, now_utc()));
        env.add_template_owned("chat", source.to_string())
            .context("compiling chat template")?;
        Ok(Self { env })
    }

    /// Render a conversation; `add_generation_prompt` appends the assistant turn opener.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> anyhow::Result<String> {
        let tmpl = self.env.get_template("chat")?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .context("rendering chat template")
    }
}

/// Broken-down UTC time: (year, month 1-12, day, hour, minute, second, weekday 0=Mon).
type Civil = (i64, u32, u32, u32, u32, u32, u32);

fn now_utc() -> Civil {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    civil(secs)
}

/// Unix seconds → civil UTC date (Howard Hinnant's days-to-civil).
fn civil(secs: i64) -> Civil {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + (m <= 2) as i64;
    let wd = (days + 3).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
        wd,
    )
}

/// The subset of C `strftime` chat templates use (llama 3 writes `%d %b %Y`).
fn strftime(fmt: &str, (y, mo, d, h, mi, s, wd): Civil) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let month = MONTHS[mo as usize - 1];
        match it.next() {
            Some('Y') => out += &y.to_string(),
            Some('y') => out += &format!("{:02}", y.rem_euclid(100)),
            Some('m') => out += &format!("{mo:02}"),
            Some('d') => out += &format!("{d:02}"),
            Some('e') => out += &format!("{d:2}"),
            Some('H') => out += &format!("{h:02}"),
            Some('I') => out += &format!("{:02}", (h + 11) % 12 + 1),
            Some('p') => out += if h < 12 { "AM" } else { "PM" },
            Some('M') => out += &format!("{mi:02}"),
            Some('S') => out += &format!("{s:02}"),
            Some('B') => out += month,
            Some('b') => out += &month[..3],
            Some('A') => out += DAYS[wd as usize],
            Some('a') => out += &DAYS[wd as usize][..3],
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::gguf::{tests::real_gguf, GgufFile};

    fn template_of(name: &str) -> Option<ChatTemplate> {
        let g = GgufFile::open(&real_gguf(name)?).unwrap();
        Some(ChatTemplate::new(g.get_str("tokenizer.chat_template").unwrap().unwrap()).unwrap())
    }

    fn sys_user() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "What is 2+2?"),
        ]
    }

    const EXPECTED: &str =
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";

    #[test]
    fn smollm2_template_renders_chatml() {
        let Some(t) = template_of("SmolLM2-135M-Instruct.Q4_1.gguf") else {
            return;
        };
        assert_eq!(
            t.render(&sys_user(), true, "<|im_start|>", "<|im_end|>")
                .unwrap(),
            EXPECTED
        );
        let no_sys = t.render(&sys_user()[1..], false, "", "").unwrap();
        assert!(
            no_sys.ends_with("<|im_start|>user\nWhat is 2+2?<|im_end|>\n"),
            "{no_sys:?}"
        );
    }

    #[test]
    fn qwen2_template_renders_chatml() {
        let Some(t) = template_of("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
            return;
        };
        assert_eq!(
            t.render(&sys_user(), true, "", "<|im_end|>").unwrap(),
            EXPECTED
        );
        // Without a system turn Qwen's template injects its default one.
        let no_sys = t.render(&sys_user()[1..], true, "", "").unwrap();
        assert!(
            no_sys.starts_with("<|im_start|>system\nYou are Qwen"),
            "{no_sys:?}"
        );
        assert!(
            no_sys.ends_with("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
        );
    }

    #[test]
    fn a_looping_template_runs_out_of_fuel_and_real_ones_do_not() {
        let t = ChatTemplate::new(
            "{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let err = format!("{:#}", t.render(&sys_user(), true, "", "").unwrap_err());
        assert!(err.contains("fuel"), "{err}");
        // Qwen's template (the larger of the two) over a 2000-message conversation.
        let Some(q) = template_of("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
            return;
        };
        let long: Vec<ChatMessage> = (0..2000)
            .map(|i| ChatMessage::new(["user", "assistant"][i % 2], format!("turn {i}")))
            .collect();
        assert!(q.render(&long, true, "", "").unwrap().contains("turn 1999"));
    }

    #[test]
    fn globals_and_python_methods() {
        let t = ChatTemplate::new(
            "{{ messages[0].content.strip() | upper }}{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}",
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi ")], false, "", "")
                .unwrap(),
            "HI"
        );
        let e = t.render(&sys_user(), false, "", "").unwrap_err();
        assert!(format!("{e:#}").contains("one message only"), "{e:#}");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %d %b %Y", civil(951_782_400)),
            "2000-02-29 00:00:00 Tue 29 Feb 2000"
        );
        assert!(ChatTemplate::new("{{ strftime_now('%Y') }}")
            .unwrap()
            .render(&[], false, "", "")
            .unwrap()
            .starts_with("20"));
    }
}
