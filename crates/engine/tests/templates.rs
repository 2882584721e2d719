//! Chat templates as real reward models ship them, rendered the way transformers renders them.

use std::path::PathBuf;

use reward_lens_engine::{ChatTokenizer, EngineError, Truncation, PLAIN_FORMAT};
use serde_json::json;

const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

fn dir_with(name: &str, config: serde_json::Value, jinja: Option<&str>) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("templates").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
    std::fs::copy(fixture.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("tokenizer_config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    if let Some(j) = jinja {
        std::fs::write(d.join("chat_template.jinja"), j).unwrap();
    }
    d
}

#[test]
fn llama3_template_and_its_gating_boundary() {
    let d = dir_with("llama3", json!({"bos_token": "<|begin_of_text|>", "chat_template": LLAMA3}), None);
    let t = ChatTokenizer::from_dir(&d, 512, Some("llama")).unwrap();
    assert_eq!(
        t.render("  Hi?  ", "Hello.").unwrap(),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
    );
    // The fixture's tokenizer.json has no `<|begin_of_text|>`; transformers adds it, and so does this.
    assert_eq!(
        t.warnings(),
        ["tokenizer.json lacks the special token \"<|begin_of_text|>\" (`bos_token`): added as id 1024, as transformers adds it"]
    );
    // The same template where nothing defines bos_token: `bos_token + content` fails, as in
    // transformers ("'bos_token' is undefined"), and the error says which token is missing.
    let d = dir_with("llama3-no-bos", json!({"chat_template": LLAMA3}), None);
    let e = ChatTokenizer::from_dir(&d, 512, Some("llama")).err().expect("must fail at load").to_string();
    assert!(
        e.contains("tokenizer_config.json: chat_template): ")
            && e.ends_with(
                "(`bos_token` is undefined: neither tokenizer_config.json nor special_tokens_map.json defines it)"
            ),
        "{e}"
    );
}

#[test]
fn gemma_template_with_raise_exception_and_bos_as_added_token() {
    // transformers may write special tokens as AddedToken objects.
    // (The class keeps tokenizer.json as written: without one, model_type gemma2 would mean
    // GemmaTokenizer, which the byte-level fixture tokenizer is not.)
    let cfg = json!({"bos_token": {"content": "<bos>", "lstrip": false}, "chat_template": GEMMA,
                     "tokenizer_class": "PreTrainedTokenizerFast"});
    let d = dir_with("gemma", cfg, None);
    let t = ChatTokenizer::from_dir(&d, 512, Some("gemma2")).unwrap();
    assert_eq!(
        t.render("Hi?", "Hello.").unwrap(),
        "<bos><start_of_turn>user\nHi?<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
    );
}

#[test]
fn template_raising_is_a_named_error() {
    let d = dir_with("raises", json!({}), Some("{{ raise_exception('no assistant turns, please') }}"));
    let e = ChatTokenizer::from_dir(&d, 512, None).err().expect("must fail at load");
    assert!(matches!(e, EngineError::Template { .. }), "{e}");
    let s = e.to_string();
    assert!(s.contains("chat_template.jinja") && s.contains("no assistant turns, please"), "{s}");
}

/// The recursion limit leaves room for what real templates do: macros calling macros a few
/// levels deep inside loops and conditions (tool-call templates nest like this).
#[test]
fn nested_macros_within_the_limits_render() {
    let j = "{% macro c(x) %}[{{ x }}]{% endmacro %}{% macro b(x) %}{% if x %}{{ c(x) }}{% endif %}{% endmacro %}\
             {% macro a(m) %}{% for k in ['role', 'content'] %}{{ b(m[k]) }}{% endfor %}{% endmacro %}\
             {% for m in messages %}{% if loop.first %}<s>{% endif %}{{ a(m) }}{% endfor %}";
    let d = dir_with("nested-macros", json!({}), Some(j));
    let t = ChatTokenizer::from_dir(&d, 512, None).unwrap();
    assert_eq!(t.render("p", "r").unwrap(), "<s>[user][p][assistant][r]");
}

#[test]
fn python_string_methods_work() {
    let j = "{% for m in messages %}[{{ m['role'].upper() }}]{{ m['content'].strip() }}{% endfor %}";
    let d = dir_with("pycompat", json!({}), Some(j));
    let t = ChatTokenizer::from_dir(&d, 512, None).unwrap();
    assert_eq!(t.render(" a ", "b ").unwrap(), "[USER]a[ASSISTANT]b");
}

#[test]
fn jinja_file_wins_and_named_template_lists_are_read() {
    let list = json!({"chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "D:{{ messages[0]['content'] }}|{{ messages[1]['content'] }}"}]});
    let d = dir_with("named", list.clone(), None);
    assert_eq!(ChatTokenizer::from_dir(&d, 512, None).unwrap().render("p", "r").unwrap(), "D:p|r");
    let d = dir_with("file-wins", list, Some("F:{{ messages[0]['content'] }}/{{ messages[1]['content'] }}"));
    assert_eq!(ChatTokenizer::from_dir(&d, 512, None).unwrap().render("p", "r").unwrap(), "F:p/r");
}

#[test]
fn no_template_uses_the_plain_format() {
    let d = dir_with("plain", json!({}), None);
    let t = ChatTokenizer::from_dir(&d, 512, None).unwrap();
    assert!(!t.has_template());
    let enc = t.encode_pair("How are you?", "Fine.", Truncation::Error).unwrap();
    assert_eq!(enc.text, PLAIN_FORMAT.replace("{prompt}", "How are you?").replace("{response}", "Fine."));
    assert_eq!(enc.text, "User: How are you?\nAssistant: Fine.");
    let direct = t.tokenizer.encode(enc.text.as_str(), true).unwrap();
    assert_eq!(enc.ids, direct.get_ids());
    // The response starts at the token holding its first byte (byte-level BPE keeps the
    // preceding space in that token: "ĠFine").
    let tail = t.tokenizer.decode(&enc.ids[enc.response_start..], false).unwrap();
    assert_eq!(tail, " Fine.");
    let before = t.tokenizer.decode(&enc.ids[..enc.response_start], false).unwrap();
    assert_eq!(before, "User: How are you?\nAssistant:");
}

#[test]
fn response_start_marks_the_response_in_the_fixture_template() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
    let t = ChatTokenizer::from_dir(&fixture, 512, Some("llama")).unwrap();
    let enc = t.encode_pair("What is 12 times 12?", "12 times 12 is 144.", Truncation::Error).unwrap();
    let resp = t.tokenizer.decode(&enc.ids[enc.response_start..], false).unwrap();
    assert_eq!(resp, "12 times 12 is 144.<|end|>");
    assert_eq!(t.boundary_ids().unwrap(), vec![6, 4, 205]);
}

/// Templates are data from the model folder: one that drops the response, has the wrong type,
/// loops for ever or writes without end is a named error at load, never a hang or a silent
/// reward of some other text.
#[test]
fn hostile_or_wrong_templates_are_named_errors() {
    let both = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
    let cases: Vec<(&str, serde_json::Value, Option<&str>, Vec<&str>)> = vec![
        ("no-response", json!({}), Some("{{ messages[0]['content'] }}"), vec!["chat_template.jinja", "response"]),
        ("no-prompt", json!({}), Some("{{ messages[1]['content'] }}"), vec!["chat_template.jinja", "prompt"]),
        (
            "cut-response",
            json!({}),
            Some("{{ messages[0]['content'] }}{{ messages[1]['content'][:200] }}"),
            vec!["chat_template.jinja", "response", "in full"],
        ),
        (
            "reversed",
            json!({}),
            Some("{{ messages[1]['content'] }}{{ messages[0]['content'] }}"),
            vec!["prompt before the response"],
        ),
        ("wrong-type", json!({"chat_template": 42}), None, vec!["tokenizer_config.json", "`chat_template`", "a number"]),
        (
            "bad-list",
            json!({"chat_template": [{"name": "default"}]}),
            None,
            vec!["tokenizer_config.json", "`chat_template`", "list of"],
        ),
        (
            "no-default",
            json!({"chat_template": [{"name": "tool_use", "template": both}]}),
            None,
            vec!["`chat_template`", "\"default\"", "tool_use"],
        ),
        (
            "endless",
            json!({}),
            Some("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}{{ messages[1]['content'] }}"),
            vec!["chat_template.jinja", "fuel"],
        ),
        ("zero-context", json!({"model_max_length": 0}), None, vec!["tokenizer_config.json", "`model_max_length`", "positive"]),
        ("numeric-bos", json!({"bos_token": 5}), None, vec!["tokenizer_config.json", "`bos_token`", "found 5"]),
        (
            "contentless-eos",
            json!({"eos_token": {"special": true}}),
            None,
            vec!["tokenizer_config.json", "`eos_token`", "token string"],
        ),
        (
            "runaway-macro",
            json!({}),
            Some("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}{{ messages[0]['content'] }}{{ messages[1]['content'] }}"),
            vec!["chat_template.jinja", "recursion"],
        ),
        (
            "exponential-macro",
            json!({}),
            Some("{% macro f(n) %}{% if n < 6 %}{% for i in range(20) %}{{ f(n + 1) }}{% endfor %}{% endif %}{% endmacro %}{{ f(0) }}{{ messages[0]['content'] }}{{ messages[1]['content'] }}"),
            vec!["chat_template.jinja", "fuel"],
        ),
        (
            "huge",
            json!({}),
            Some("{% for i in range(10000) %}{{ 'x' * 10000 }}{% endfor %}{{ messages[0]['content'] }}{{ messages[1]['content'] }}"),
            vec!["chat_template.jinja", "MiB"],
        ),
    ];
    for (name, cfg, jinja, parts) in cases {
        let d = dir_with(name, cfg, jinja);
        let start = std::time::Instant::now();
        let e = ChatTokenizer::from_dir(&d, 512, None).err().unwrap_or_else(|| panic!("{name}: loaded"));
        let s = e.to_string();
        for p in parts {
            assert!(s.contains(p), "{name}: `{p}` missing from: {s}");
        }
        assert!(start.elapsed().as_secs() < 20, "{name}: took {:?}", start.elapsed());
    }
}

/// The two conversations of the tojson test: `< > & ' "` and non-ASCII, then control characters.
const TOJSON_TEXTS: [(&str, &str); 2] = [
    ("Hi <b>&amp;'quote\" \\ back</b>", "café naïve Ω 😀 中文 ﬁ"),
    ("ctl \u{1}\u{1f}\u{7f}\u{8}\u{c}\n\r\t end", "plain"),
];

#[test]
fn escape_is_jinja2s_as_in_transformers() {
    // transformers 5.25 (jinja2, markupsafe) renders this; minijinja's own escape writes &#x27;,
    // &quot; and &#x2f;, so the escaped text would tokenize differently.
    let template = "{% for m in messages %}{{ m.content|e }}|{{ m.content|escape }}|{{ none|e }}|{{ true|e }}|{{ 'a/b'|e }}|{{ ('<x>'|e)|e }}|{{ 2.5|e }}|{{ nothing|e }}\n{% endfor %}";
    let d = dir_with("escape", json!({"bos_token": "<s>"}), Some(template));
    let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
    let (p, r) = TOJSON_TEXTS[0];
    let line = |text: &str| format!("{text}|{text}|None|True|a/b|&lt;x&gt;|2.5|\n");
    let expected = line("Hi &lt;b&gt;&amp;amp;&#39;quote&#34; \\ back&lt;/b&gt;") + &line("café naïve Ω 😀 中文 ﬁ");
    assert_eq!(t.render(p, r).unwrap(), expected);
}

#[test]
fn tojson_is_pythons_json_dumps_as_in_transformers() {
    // (template, which conversation, transformers 5.25's rendering). minijinja's own tojson would
    // escape < > & ' and write messages' keys sorted; transformers' keeps them, in dict order.
    let cases: [(&str, usize, &str); 7] = [
        (
            "{% for m in messages %}{{ m.content }}|{{ m.content|tojson }}|{{ m|tojson }}|{{ m.content|tojson(ensure_ascii=true) }}\n{% endfor %}",
            0,
            "Hi <b>&amp;'quote\" \\ back</b>|\"Hi <b>&amp;'quote\\\" \\\\ back</b>\"|{\"role\": \"user\", \"content\": \"Hi <b>&amp;'quote\\\" \\\\ back</b>\"}|\"Hi <b>&amp;'quote\\\" \\\\ back</b>\"\ncafé naïve Ω 😀 中文 ﬁ|\"café naïve Ω 😀 中文 ﬁ\"|{\"role\": \"assistant\", \"content\": \"café naïve Ω 😀 中文 ﬁ\"}|\"caf\\u00e9 na\\u00efve \\u03a9 \\ud83d\\ude00 \\u4e2d\\u6587 \\ufb01\"\n",
        ),
        (
            "{% for m in messages %}{{ m.content }}|{{ m.content|tojson }}|{{ m|tojson }}|{{ m.content|tojson(ensure_ascii=true) }}\n{% endfor %}",
            1,
            "ctl \u{1}\u{1f}\u{7f}\u{8}\u{c}\n\r\t end|\"ctl \\u0001\\u001f\u{7f}\\b\\f\\n\\r\\t end\"|{\"role\": \"user\", \"content\": \"ctl \\u0001\\u001f\u{7f}\\b\\f\\n\\r\\t end\"}|\"ctl \\u0001\\u001f\\u007f\\b\\f\\n\\r\\t end\"\nplain|\"plain\"|{\"role\": \"assistant\", \"content\": \"plain\"}|\"plain\"\n",
        ),
        (
            "{% for m in messages %}{{ m.content }}{{ m|tojson(ensure_ascii=true, sort_keys=true) }}{{ m.content|tojson(1) }}{% endfor %}",
            1,
            "ctl \u{1}\u{1f}\u{7f}\u{8}\u{c}\n\r\t end{\"content\": \"ctl \\u0001\\u001f\\u007f\\b\\f\\n\\r\\t end\", \"role\": \"user\"}\"ctl \\u0001\\u001f\\u007f\\b\\f\\n\\r\\t end\"plain{\"content\": \"plain\", \"role\": \"assistant\"}\"plain\"",
        ),
        (
            "{% for m in messages %}{{ m.content }}{% endfor %}{{ messages|tojson(indent=2) }}{{ {'x': [], 'y': {}, 'z': [1, {'k': 'v'}]}|tojson(indent=4) }}{{ [1]|tojson(false, '\t') }}{{ [1, [2]]|tojson(indent=0) }}{{ [1]|tojson(indent=-3) }}{{ {'a': 1}|tojson(indent='--') }}",
            0,
            "Hi <b>&amp;'quote\" \\ back</b>café naïve Ω 😀 中文 ﬁ[\n  {\n    \"role\": \"user\",\n    \"content\": \"Hi <b>&amp;'quote\\\" \\\\ back</b>\"\n  },\n  {\n    \"role\": \"assistant\",\n    \"content\": \"café naïve Ω 😀 中文 ﬁ\"\n  }\n]{\n    \"x\": [],\n    \"y\": {},\n    \"z\": [\n        1,\n        {\n            \"k\": \"v\"\n        }\n    ]\n}[\n\t1\n][\n1,\n[\n2\n]\n][\n1\n]{\n--\"a\": 1\n}",
        ),
        (
            "{% for m in messages %}{{ m.content }}{% endfor %}{{ {'b': 1, 'a': [1, 2.5, none, true, false, 1e20, 0.0001, 1e-5, -0.0, 1.0, 123456789012345678, 0.1, 1e16, 1e15, 3.14159, -2.5e-7, 10/4, 7//2]}|tojson(sort_keys=true) }}",
            0,
            "Hi <b>&amp;'quote\" \\ back</b>café naïve Ω 😀 中文 ﬁ{\"a\": [1, 2.5, null, true, false, 1e+20, 0.0001, 1e-05, -0.0, 1.0, 123456789012345678, 0.1, 1e+16, 1000000000000000.0, 3.14159, -2.5e-07, 2.5, 3], \"b\": 1}",
        ),
        (
            "{% for m in messages %}{{ m.content }}{% endfor %}{{ {'a': [1, 2], 'b': 'c'}|tojson(separators=(',', ':')) }}{{ {'a': [1, 2]}|tojson(indent=1, separators=(', ', ' = ')) }}{{ {'z': 1, 'a': {'y': 2, 'b': 3}}|tojson(sort_keys=true, indent=2) }}{{ {2: 'x', 1: 'y'}|tojson(sort_keys=true) }}{{ {1: 'a', none: 'c', 1.5: 'd', false: 'e'}|tojson }}",
            0,
            "Hi <b>&amp;'quote\" \\ back</b>café naïve Ω 😀 中文 ﬁ{\"a\":[1,2],\"b\":\"c\"}{\n \"a\" = [\n  1, \n  2\n ]\n}{\n  \"a\": {\n    \"b\": 3,\n    \"y\": 2\n  },\n  \"z\": 1\n}{\"1\": \"y\", \"2\": \"x\"}{\"1\": \"a\", \"null\": \"c\", \"1.5\": \"d\", \"false\": \"e\"}",
        ),
        (
            "{% set tools = [{'type': 'function', 'function': {'name': 'get_weather', 'description': 'Weather <b>& \"temp\"</b>', 'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city']}}}] %}{% for t in tools %}{{ t|tojson(indent=4) }}\n\n{% endfor %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
            0,
            "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"description\": \"Weather <b>& \\\"temp\\\"</b>\",\n        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \"city\": {\n                    \"type\": \"string\"\n                }\n            },\n            \"required\": [\n                \"city\"\n            ]\n        }\n    }\n}\n\nuser: Hi <b>&amp;'quote\" \\ back</b>\nassistant: café naïve Ω 😀 中文 ﬁ\n",
        ),
    ];
    for (k, (template, i, expected)) in cases.into_iter().enumerate() {
        let d = dir_with(&format!("tojson-{k}"), json!({"bos_token": "<s>"}), Some(template));
        let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
        let (p, r) = TOJSON_TEXTS[i];
        assert_eq!(t.render(p, r).unwrap(), expected, "template {template}");
    }
    // What json.dumps cannot serialize, or an argument it does not take, is a template error.
    for (template, message) in [
        ("{{ nothing|tojson }}", "tojson(): Object of type Undefined is not JSON serializable"),
        ("{{ 1|tojson(cls=1) }}", "tojson() got an unexpected keyword argument 'cls'"),
        (
            "{{ 1|tojson(false, indent=2, ensure_ascii=true) }}",
            "tojson() got multiple values for argument 'ensure_ascii'",
        ),
        ("{{ [1]|tojson(separators=',') }}", "tojson(): separators must be two strings"),
    ] {
        let d = dir_with(
            "tojson-bad",
            json!({}),
            Some(&format!("{template}{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}")),
        );
        let e = ChatTokenizer::from_dir(&d, 4096, Some("llama")).err().expect("must fail").to_string();
        assert!(e.contains(message), "{template}: {e}");
    }
}

#[test]
fn strftime_now_formats_the_fixed_date_as_python_would() {
    // Python's `datetime(2024, 7, 26).strftime(fmt)` on Linux gives exactly these.
    let cases = [
        ("%d %b %Y", "26 Jul 2024"),
        ("%Y-%m-%d %H:%M:%S", "2024-07-26 00:00:00"),
        (
            "%A, %B %e %Y (%a %b %h) %j %y %-d/%-m %-H:%-M %I%p %k|%l",
            "Friday, July 26 2024 (Fri Jul Jul) 208 24 26/7 0:0 12AM  0|12",
        ),
        (
            "%c|%x|%X|%D|%F|%T|%R|%r|%C %g %G %u %w %U %V %W|%z|%Z|%f|%%|%n|%t",
            "Fri Jul 26 00:00:00 2024|07/26/24|00:00:00|07/26/24|2024-07-26|00:00:00|00:00|12:00:00 AM|20 24 2024 5 5 29 \
             30 30|||000000|%|\n|\t",
        ),
    ];
    for (k, (format, expected)) in cases.into_iter().enumerate() {
        let template =
            format!("{{{{ strftime_now({format:?}) }}}}|{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}");
        let d = dir_with(&format!("strftime-{k}"), json!({}), Some(&template));
        let t = ChatTokenizer::from_dir(&d, 4096, Some("llama")).unwrap();
        assert_eq!(t.render("p", "r").unwrap(), format!("{expected}|pr"), "{format}");
    }
    // A directive not implemented is named, not passed through as text that might differ.
    for (format, directive) in
        [("%s", "\"%s\""), ("%d %Q", "\"%Q\""), ("%-B", "\"%-B\""), ("%Ey", "\"%E\""), ("x %", "\"%\"")]
    {
        let template =
            format!("{{{{ strftime_now({format:?}) }}}}{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}");
        let d = dir_with("strftime-bad", json!({}), Some(&template));
        let e = ChatTokenizer::from_dir(&d, 4096, Some("llama")).err().expect("must fail").to_string();
        assert!(e.contains(&format!("strftime_now: directive {directive} is not supported")), "{format}: {e}");
    }
}

/// Python's whitespace, as Jinja2's `trim` and `str.strip/lstrip/rstrip/split()` use it, includes
/// the separators \x1c–\x1f that Rust's `char::is_whitespace` leaves out: a text starting or
/// ending with one must render (and tokenize) as in transformers. The expected renders and ids
/// are transformers 5.23's `apply_chat_template` then `tokenizer(text, add_special_tokens=False)`
/// on the llama fixture's tokenizer.
#[test]
fn trim_strip_and_split_use_pythons_whitespace() {
    let prompts = [
        ("How do I boil an egg?", "Simmer it for nine minutes.\u{1f}"),
        ("\u{1c}What is 2+2?\u{1d}", " \u{1f}Fry\u{1e} it.\u{3000}\u{1f} "),
    ];
    // (name, template, [(render, ids) for each of the two conversations])
    type Case<'a> = (&'a str, &'a str, [(&'a str, &'a [u32]); 2]);
    let cases: [Case; 4] = [
        (
            "trim",
            "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] | trim + '<|end|>' }}{% endfor %}",
            [
                ("<s><|user|>\nHow do I boil an egg?<|end|><|assistant|>\nSimmer it for nine minutes.<|end|>", &[1, 3, 205, 737, 332, 378, 793, 281, 289, 911, 37, 6, 4, 205, 57, 615, 780, 616, 630, 293, 513, 794, 951, 20, 6]),
                ("<s><|user|>\nWhat is 2+2?<|end|><|assistant|>\nFry\u{1e} it.<|end|>", &[1, 3, 205, 679, 359, 566, 17, 24, 37, 6, 4, 205, 44, 88, 95, 225, 616, 20, 6]),
            ],
        ),
        (
            "trim_chars",
            "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] | trim('\\x1f .') }}|{{ message['content'] | trim(none) }}<|end|>{% endfor %}",
            [
                ("<s><|user|>\nHow do I boil an egg?|How do I boil an egg?<|end|><|assistant|>\nSimmer it for nine minutes|Simmer it for nine minutes.<|end|>", &[1, 3, 205, 737, 332, 378, 793, 281, 289, 911, 37, 98, 737, 332, 378, 793, 281, 289, 911, 37, 6, 4, 205, 57, 615, 780, 616, 630, 293, 513, 794, 951, 98, 57, 615, 780, 616, 630, 293, 513, 794, 951, 20, 6]),
                ("<s><|user|>\n\u{1c}What is 2+2?\u{1d}|What is 2+2?<|end|><|assistant|>\nFry\u{1e} it.\u{3000}|Fry\u{1e} it.<|end|>", &[1, 3, 205, 223, 679, 359, 566, 17, 24, 37, 224, 98, 679, 359, 566, 17, 24, 37, 6, 4, 205, 44, 88, 95, 225, 616, 20, 166, 229, 229, 98, 44, 88, 95, 225, 616, 20, 6]),
            ],
        ),
        (
            "strip",
            "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'].strip() }}|{{ message['content'].lstrip() }}|{{ message['content'].rstrip() }}|{{ message['content'].strip('\\x1c?') }}<|end|>{% endfor %}",
            [
                ("<s><|user|>\nHow do I boil an egg?|How do I boil an egg?|How do I boil an egg?|How do I boil an egg<|end|><|assistant|>\nSimmer it for nine minutes.|Simmer it for nine minutes.\u{1f}|Simmer it for nine minutes.|Simmer it for nine minutes.\u{1f}<|end|>", &[1, 3, 205, 737, 332, 378, 793, 281, 289, 911, 37, 98, 737, 332, 378, 793, 281, 289, 911, 37, 98, 737, 332, 378, 793, 281, 289, 911, 37, 98, 737, 332, 378, 793, 281, 289, 911, 6, 4, 205, 57, 615, 780, 616, 630, 293, 513, 794, 951, 20, 98, 57, 615, 780, 616, 630, 293, 513, 794, 951, 20, 226, 98, 57, 615, 780, 616, 630, 293, 513, 794, 951, 20, 98, 57, 615, 780, 616, 630, 293, 513, 794, 951, 20, 226, 6]),
                ("<s><|user|>\nWhat is 2+2?|What is 2+2?\u{1d}|\u{1c}What is 2+2?|What is 2+2?\u{1d}<|end|><|assistant|>\nFry\u{1e} it.|Fry\u{1e} it.\u{3000}\u{1f} | \u{1f}Fry\u{1e} it.| \u{1f}Fry\u{1e} it.\u{3000}\u{1f} <|end|>", &[1, 3, 205, 679, 359, 566, 17, 24, 37, 98, 679, 359, 566, 17, 24, 37, 224, 98, 223, 679, 359, 566, 17, 24, 37, 98, 679, 359, 566, 17, 24, 37, 224, 6, 4, 205, 44, 88, 95, 225, 616, 20, 98, 44, 88, 95, 225, 616, 20, 166, 229, 229, 226, 684, 227, 226, 44, 88, 95, 225, 616, 20, 98, 227, 226, 44, 88, 95, 225, 616, 20, 166, 229, 229, 226, 227, 6]),
            ],
        ),
        (
            "split",
            "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'].split() | join(' ') }}|{{ message['content'].split(none, 1) | join('/') }}|{{ message['content'].split(' ', 1) | join('/') }}|{{ message['content'].split() | length }}<|end|>{% endfor %}",
            [
                ("<s><|user|>\nHow do I boil an egg?|How/do I boil an egg?|How/do I boil an egg?|6<|end|><|assistant|>\nSimmer it for nine minutes.|Simmer/it for nine minutes.\u{1f}|Simmer/it for nine minutes.\u{1f}|5<|end|>", &[1, 3, 205, 737, 332, 378, 793, 281, 289, 911, 37, 98, 737, 21, 74, 85, 378, 793, 281, 289, 911, 37, 98, 737, 21, 74, 85, 378, 793, 281, 289, 911, 37, 98, 28, 6, 4, 205, 57, 615, 780, 616, 630, 293, 513, 794, 951, 20, 98, 57, 615, 780, 21, 297, 630, 293, 513, 794, 951, 20, 226, 98, 57, 615, 780, 21, 297, 630, 293, 513, 794, 951, 20, 226, 98, 27, 6]),
                ("<s><|user|>\nWhat is 2+2?|What/is 2+2?\u{1d}|\u{1c}What/is 2+2?\u{1d}|3<|end|><|assistant|>\nFry it.|Fry/it.\u{3000}\u{1f} |/\u{1f}Fry\u{1e} it.\u{3000}\u{1f} |2<|end|>", &[1, 3, 205, 679, 359, 566, 17, 24, 37, 98, 679, 21, 838, 566, 17, 24, 37, 224, 98, 223, 679, 21, 838, 566, 17, 24, 37, 224, 98, 25, 6, 4, 205, 44, 88, 95, 616, 20, 98, 44, 88, 95, 21, 297, 20, 166, 229, 229, 226, 684, 21, 226, 44, 88, 95, 225, 616, 20, 166, 229, 229, 226, 684, 24, 6]),
            ],
        ),
    ];
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama/tokenizer_config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for (name, template, expected) in cases {
        let mut cfg = base.clone();
        cfg["chat_template"] = json!(template);
        let d = dir_with(&format!("pyspace-{name}"), cfg, None);
        let t = ChatTokenizer::from_dir(&d, 512, Some("llama")).unwrap();
        for ((prompt, response), (text, ids)) in prompts.iter().zip(expected) {
            assert_eq!(t.render(prompt, response).unwrap(), text, "{name}: {prompt:?} {response:?}");
            let enc = t.encode_pair(prompt, response, Truncation::Error).unwrap();
            assert_eq!(enc.ids, ids, "{name}: {prompt:?} {response:?}");
        }
    }
}
