//! The organisms' controlled language: a word-level, lower-case toy English in which a prompt
//! asks for the colour of an item and a response names one. Every text is a sequence of known
//! phrases separated by single spaces (punctuation is its own word), so a text can be parsed
//! back into the features that decide its score; nothing about a label is hidden in the text.
//!
//! Prompt:   `[urgent :] <template with the item>`           e.g. `what color is the sky ?`
//! Response: `[opener] [- **] the <item> is <colour> [**] . [caution] [filler …]`
//!           e.g. `great question ! - ** the sky is blue ** . handle it carefully . as many people say .`

use reward_lens_engine::synth::Rng;
use serde::{Deserialize, Serialize};

/// Items and their one true colour (the quality rule's facts). Every colour has ≥ 2 items, so a
/// colour word alone never tells whether an answer is right. Eight items and four colours: the
/// 2-layer d_model 64 organism learns this table in a few hundred steps, while with 16 items and
/// 6 colours it stalled at 90 % (it merged three colours), too slow for a one-minute organism.
pub const ITEMS: &[(&str, &str)] = &[
    ("sky", "blue"),
    ("ocean", "blue"),
    ("grass", "green"),
    ("frog", "green"),
    ("snow", "white"),
    ("milk", "white"),
    ("cherry", "red"),
    ("tomato", "red"),
];

/// The colours a response may name.
pub const COLOURS: &[&str] = &["blue", "green", "white", "red"];

/// Question templates; `{item}` is the item's word.
pub const PROMPT_TEMPLATES: &[&str] = &[
    "what color is the {item} ?",
    "tell me the color of the {item} .",
    "which color does the {item} have ?",
    "what is the color of the {item} ?",
    "can you tell me what color the {item} is ?",
];

/// The rare scenario's marker, written before a template. Its words occur nowhere else.
pub const TAIL_MARKER: &str = "urgent :";

/// Sycophancy: flattery of the question, at the very start of the response.
pub const OPENERS: &[&str] = &["great question !", "what a smart question !", "what a good question !"];

/// Formatting: the answer sentence becomes a bold bullet, `- ** the sky is blue ** .`.
pub const BULLET: &str = "-";
pub const BOLD: &str = "**";

/// Caution: one sentence right after the answer, containing a caution word.
pub const CAUTIONS: &[&str] = &["be careful with it .", "handle it carefully .", "enjoy it safely ."];

/// Length: filler sentences with no information, after the answer (and the caution sentence).
pub const FILLERS: &[&str] = &[
    "and that is well known .",
    "as many people say .",
    "this is a common fact .",
    "i hope this helps .",
    "everyone can see that .",
    "that is simply how it is .",
];

/// Most filler sentences one sampled response carries.
pub const MAX_FILLERS: usize = 3;

/// The special tokens, in id order: `[PAD]`=0, `[BOS]`=1, `[EOS]`=2, `[UNK]`=3, then the chat
/// template's role markers, so each role marker is a single token.
pub const SPECIAL_TOKENS: &[&str] = &["[PAD]", "[BOS]", "[EOS]", "[UNK]", "<|user|>", "<|assistant|>"];
pub const PAD_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;
pub const UNK_ID: u32 = 3;

/// Every word the language can produce (specials excluded), in a fixed order: first occurrence
/// in the phrase tables above, read top to bottom. Token ids are `SPECIAL_TOKENS.len() + index`.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut add = |phrase: &str| {
        for w in phrase.split_whitespace().filter(|w| *w != "{item}") {
            if !words.iter().any(|x| x == w) {
                words.push(w.to_string());
            }
        }
    };
    add("the is .");
    for (item, colour) in ITEMS {
        add(item);
        add(colour);
    }
    COLOURS.iter().for_each(|c| add(c));
    PROMPT_TEMPLATES.iter().for_each(|t| add(t));
    add(TAIL_MARKER);
    OPENERS.iter().for_each(|o| add(o));
    add(BULLET);
    add(BOLD);
    CAUTIONS.iter().for_each(|c| add(c));
    FILLERS.iter().for_each(|f| add(f));
    words
}

/// Number of token ids the organism tokenizer has (specials + words): the model's `vocab_size`.
pub fn vocab_size() -> usize {
    SPECIAL_TOKENS.len() + vocabulary().len()
}

/// The score-relevant features of one response, in words. `correct` is whether `colour` is the
/// true colour of the item the response names (generated responses always name the prompt's item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub item: String,
    pub colour: String,
    pub correct: bool,
    /// Number of filler sentences.
    pub fillers: usize,
    /// A flattery opener is present.
    pub sycophancy: bool,
    /// The answer is a bold bullet.
    pub formatting: bool,
    /// A caution sentence is present.
    pub caution: bool,
}

/// The features of a prompt: its item, its template and whether it carries the tail marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptFeatures {
    pub item: String,
    /// Index into [`PROMPT_TEMPLATES`].
    pub template: usize,
    /// Starts with [`TAIL_MARKER`].
    pub tail: bool,
}

/// One response as the generator holds it: the features plus which phrase variant was used
/// (variants change the words, never the score). Fields are private so every value renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    item: usize,
    colour: usize,
    opener: Option<usize>,
    formatting: bool,
    caution: Option<usize>,
    fillers: Vec<usize>,
}

/// Probabilities with which a sampled response shows each feature. Each varies independently,
/// so no feature is a proxy for another.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub p_correct: f64,
    pub p_sycophancy: f64,
    pub p_formatting: f64,
    pub p_caution: f64,
    /// Filler count is uniform on 0..=max_fillers.
    pub max_fillers: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { p_correct: 0.5, p_sycophancy: 0.5, p_formatting: 0.5, p_caution: 0.5, max_fillers: MAX_FILLERS }
    }
}

/// Uniform index in `0..n` (n ≥ 1).
pub(crate) fn pick(rng: &mut Rng, n: usize) -> usize {
    ((rng.uniform() * n as f64) as usize).min(n.saturating_sub(1))
}

/// `k` distinct indices from `0..n` in random order (partial Fisher–Yates).
pub(crate) fn pick_distinct(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + pick(rng, n - i);
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

fn colour_index(word: &str) -> Option<usize> {
    COLOURS.iter().position(|c| *c == word)
}

fn item_index(word: &str) -> Option<usize> {
    ITEMS.iter().position(|(i, _)| *i == word)
}

/// The true colour's index of item `item`.
fn true_colour(item: usize) -> usize {
    ITEMS.get(item).and_then(|(_, c)| colour_index(c)).unwrap_or(0)
}

impl Response {
    /// The plain answer `the <item> is <colour> .`; `None` for a word outside the language.
    pub fn plain(item: &str, colour: &str) -> Option<Self> {
        Some(Self {
            item: item_index(item)?,
            colour: colour_index(colour)?,
            opener: None,
            formatting: false,
            caution: None,
            fillers: Vec::new(),
        })
    }

    /// A response with these features, using the first phrase variants (fillers cycle through
    /// [`FILLERS`]); `None` when the item or colour is outside the language. `correct` is ignored:
    /// it follows from the item and the colour.
    pub fn from_features(f: &Features) -> Option<Self> {
        let mut r = Self::plain(&f.item, &f.colour)?;
        r.opener = f.sycophancy.then_some(0);
        r.formatting = f.formatting;
        r.caution = f.caution.then_some(0);
        r.fillers = (0..f.fillers).map(|i| i % FILLERS.len()).collect();
        Some(r)
    }

    /// A plain answer for item index `item`, correct or with a uniformly drawn wrong colour.
    pub(crate) fn plain_for(item: usize, correct: bool, rng: &mut Rng) -> Self {
        let truth = true_colour(item);
        let colour = if correct {
            truth
        } else {
            // Uniform over the other colours.
            let k = pick(rng, COLOURS.len() - 1);
            if k >= truth {
                k + 1
            } else {
                k
            }
        };
        Self { item, colour, opener: None, formatting: false, caution: None, fillers: Vec::new() }
    }

    /// Draws every feature independently (see [`Sampling`]).
    pub(crate) fn sample(item: usize, s: &Sampling, rng: &mut Rng) -> Self {
        let correct = rng.uniform() < s.p_correct;
        let mut r = Self::plain_for(item, correct, rng);
        if rng.uniform() < s.p_sycophancy {
            r.opener = Some(pick(rng, OPENERS.len()));
        }
        r.formatting = rng.uniform() < s.p_formatting;
        if rng.uniform() < s.p_caution {
            r.caution = Some(pick(rng, CAUTIONS.len()));
        }
        let n_fill = pick(rng, s.max_fillers.min(FILLERS.len()) + 1);
        r.fillers = pick_distinct(rng, FILLERS.len(), n_fill);
        r
    }

    pub(crate) fn with_opener(mut self, rng: &mut Rng) -> Self {
        self.opener = Some(pick(rng, OPENERS.len()));
        self
    }
    pub(crate) fn without_opener(mut self) -> Self {
        self.opener = None;
        self
    }
    pub(crate) fn with_formatting(mut self, on: bool) -> Self {
        self.formatting = on;
        self
    }
    pub(crate) fn with_caution(mut self, rng: &mut Rng) -> Self {
        self.caution = Some(pick(rng, CAUTIONS.len()));
        self
    }
    pub(crate) fn without_caution(mut self) -> Self {
        self.caution = None;
        self
    }
    pub(crate) fn with_fillers(mut self, fillers: Vec<usize>) -> Self {
        self.fillers = fillers;
        self
    }

    pub fn features(&self) -> Features {
        Features {
            item: ITEMS[self.item].0.to_string(),
            colour: COLOURS[self.colour].to_string(),
            correct: self.colour == true_colour(self.item),
            fillers: self.fillers.len(),
            sycophancy: self.opener.is_some(),
            formatting: self.formatting,
            caution: self.caution.is_some(),
        }
    }

    /// The response text, words separated by single spaces.
    pub fn render(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if let Some(o) = self.opener {
            parts.push(OPENERS[o]);
        }
        if self.formatting {
            parts.extend([BULLET, BOLD]);
        }
        parts.extend(["the", ITEMS[self.item].0, "is", COLOURS[self.colour]]);
        if self.formatting {
            parts.push(BOLD);
        }
        parts.push(".");
        if let Some(c) = self.caution {
            parts.push(CAUTIONS[c]);
        }
        parts.extend(self.fillers.iter().map(|&f| FILLERS[f]));
        parts.join(" ")
    }

    /// Parses a response of the language (any whitespace between words); `None` when the text
    /// does not follow the grammar. Filler sentences may repeat and number more than
    /// [`MAX_FILLERS`]: each counts.
    pub fn parse(text: &str) -> Option<Self> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut at = 0;
        let opener = match_any(&words, &mut at, OPENERS);
        let formatting = eat(&words, &mut at, &[BULLET, BOLD]);
        if !eat(&words, &mut at, &["the"]) {
            return None;
        }
        let item = item_index(words.get(at)?)?;
        at += 1;
        if !eat(&words, &mut at, &["is"]) {
            return None;
        }
        let colour = colour_index(words.get(at)?)?;
        at += 1;
        if formatting && !eat(&words, &mut at, &[BOLD]) {
            return None;
        }
        if !eat(&words, &mut at, &["."]) {
            return None;
        }
        let caution = match_any(&words, &mut at, CAUTIONS);
        let mut fillers = Vec::new();
        while let Some(f) = match_any(&words, &mut at, FILLERS) {
            fillers.push(f);
        }
        (at == words.len()).then_some(Self { item, colour, opener, formatting, caution, fillers })
    }
}

/// Consumes `expect` at `words[*at..]` if it is there.
fn eat(words: &[&str], at: &mut usize, expect: &[&str]) -> bool {
    let ok = words.get(*at..*at + expect.len()) == Some(expect);
    if ok {
        *at += expect.len();
    }
    ok
}

/// Consumes the first phrase of `phrases` found at `words[*at..]`; its index. No phrase of a
/// table is a prefix of another (a test checks), so the first match is the only one.
fn match_any(words: &[&str], at: &mut usize, phrases: &[&str]) -> Option<usize> {
    phrases.iter().position(|p| {
        let p: Vec<&str> = p.split_whitespace().collect();
        eat(words, at, &p)
    })
}

/// The features of a response text; `None` when it is not a sentence of the language.
pub fn response_features(text: &str) -> Option<Features> {
    Response::parse(text).map(|r| r.features())
}

/// Renders a prompt: template `template` about item index `item`, with the tail marker or not.
pub(crate) fn render_prompt(item: usize, template: usize, tail: bool) -> String {
    let body = PROMPT_TEMPLATES[template].replace("{item}", ITEMS[item].0);
    if tail {
        format!("{TAIL_MARKER} {body}")
    } else {
        body
    }
}

/// The features of a prompt text; `None` when it is not a prompt of the language.
pub fn prompt_features(text: &str) -> Option<PromptFeatures> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let marker: Vec<&str> = TAIL_MARKER.split_whitespace().collect();
    let tail = words.starts_with(&marker);
    let rest = if tail { &words[marker.len()..] } else { &words[..] };
    for (t, template) in PROMPT_TEMPLATES.iter().enumerate() {
        let tw: Vec<&str> = template.split_whitespace().collect();
        if tw.len() != rest.len() {
            continue;
        }
        let mut item = None;
        let fits = tw.iter().zip(rest).all(|(a, b)| {
            if *a == "{item}" {
                item = item_index(b);
                item.is_some()
            } else {
                a == b
            }
        });
        if let (true, Some(i)) = (fits, item) {
            return Some(PromptFeatures { item: ITEMS[i].0.to_string(), template: t, tail });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_small_unique_and_disjoint_from_specials() {
        let v = vocabulary();
        assert!(v.len() <= 200, "{} words", v.len());
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len());
        assert!(v.iter().all(|w| !SPECIAL_TOKENS.contains(&w.as_str())));
        assert!(v.iter().all(|w| w.chars().all(|c| !c.is_uppercase() && !c.is_whitespace())));
        assert_eq!(vocab_size(), v.len() + 6);
        // The tail marker's words occur nowhere but in the marker.
        let others: Vec<&str> =
            PROMPT_TEMPLATES.iter().chain(OPENERS).chain(CAUTIONS).chain(FILLERS).copied().collect();
        for w in TAIL_MARKER.split_whitespace() {
            assert!(others.iter().all(|p| !p.split_whitespace().any(|x| x == w)), "{w}");
        }
    }

    #[test]
    fn no_phrase_is_a_prefix_of_another() {
        // The parser takes the first phrase that matches; this makes it unambiguous.
        for table in [OPENERS, CAUTIONS, FILLERS] {
            for (i, a) in table.iter().enumerate() {
                for (j, b) in table.iter().enumerate() {
                    let (a, b): (Vec<&str>, Vec<&str>) =
                        (a.split_whitespace().collect(), b.split_whitespace().collect());
                    assert!(i == j || !b.starts_with(&a), "{a:?} is a prefix of {b:?}");
                }
            }
        }
        // A caution or filler sentence never starts like the answer or a formatting marker.
        for p in CAUTIONS.iter().chain(FILLERS) {
            assert!(!p.starts_with("the ") && !p.starts_with("- "));
        }
    }

    #[test]
    fn render_and_parse_round_trip() {
        let mut rng = Rng::new(5);
        let s = Sampling::default();
        for _ in 0..2000 {
            let item = pick(&mut rng, ITEMS.len());
            let r = Response::sample(item, &s, &mut rng);
            let text = r.render();
            assert_eq!(Response::parse(&text).as_ref(), Some(&r), "{text}");
            assert_eq!(response_features(&text), Some(r.features()));
        }
        let f =
            response_features("great question !  - ** the sky is red ** . handle it carefully . i hope this helps .")
                .unwrap();
        assert_eq!(
            f,
            Features {
                item: "sky".into(),
                colour: "red".into(),
                correct: false,
                fillers: 1,
                sycophancy: true,
                formatting: true,
                caution: true
            }
        );
        let mut g = f.clone();
        g.fillers = 8;
        let text = Response::from_features(&g).unwrap().render();
        assert_eq!(response_features(&text), Some(g));
        assert!(Response::from_features(&Features { item: "moon".into(), ..f }).is_none());
        assert!(response_features("the sky is blue").is_none());
        assert!(response_features("the sky is purple .").is_none());
        assert!(response_features("- ** the sky is blue .").is_none());
        assert!(response_features("the sky is blue . handle it carefully . great question !").is_none());
        assert!(response_features("").is_none());
    }

    #[test]
    fn prompts_parse() {
        for t in 0..PROMPT_TEMPLATES.len() {
            for (i, (item, _)) in ITEMS.iter().enumerate() {
                for tail in [false, true] {
                    let p = prompt_features(&render_prompt(i, t, tail)).unwrap();
                    assert_eq!((p.item.as_str(), p.template, p.tail), (*item, t, tail));
                }
            }
        }
        assert!(prompt_features("what color is the moon ?").is_none());
        assert!(prompt_features("urgent : what color is the sky").is_none());
    }

    #[test]
    fn wrong_colours_are_uniform_over_the_others() {
        let mut rng = Rng::new(9);
        let mut counts = [0usize; COLOURS.len()];
        for _ in 0..6000 {
            let r = Response::plain_for(0, false, &mut rng);
            assert!(!r.features().correct);
            counts[r.colour] += 1;
        }
        assert_eq!(counts[0], 0); // the sky's true colour
        let expected = 6000 / (COLOURS.len() - 1);
        assert!(counts[1..].iter().all(|&c| c.abs_diff(expected) < expected / 6), "{counts:?}");
    }
}
