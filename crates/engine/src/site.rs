//! Activation sites, named as in TransformerLens so users' habits carry over.
//!
//! Where each site fires (B = batch, T = positions, d = d_model, H = heads, K = kv heads):
//!
//! | name | shape | where |
//! |---|---|---|
//! | `hook_embed` | [B,T,d] | token embedding as it enters the residual (Gemma-2: already × √d) |
//! | `hook_pos_embed` | [B,T,d] | learned position embedding (GPT-2 only) |
//! | `blocks.{l}.hook_resid_pre` | [B,T,d] | residual stream entering block l |
//! | `blocks.{l}.attn.hook_q` | [B,T,H,hd] | queries after q_proj (and Qwen3's q_norm), before RoPE |
//! | `blocks.{l}.attn.hook_k` / `hook_v` | [B,T,K,hd] | keys (after k_norm, before RoPE) / values |
//! | `blocks.{l}.attn.hook_rot_q` / `hook_rot_k` | as q / k | after RoPE (RoPE models only) |
//! | `blocks.{l}.attn.hook_attn_scores` | [B,H,T,T] | scaled (and soft-capped) logits, before the mask |
//! | `blocks.{l}.attn.hook_pattern` | [B,H,T,T] | softmax weights, masked (query = dest, key = src) |
//! | `blocks.{l}.attn.hook_z` | [B,T,H,hd] | per-head mix of values, before o_proj |
//! | `blocks.{l}.hook_attn_out` | [B,T,d] | what attention adds to the residual (o_proj output; Gemma-2: after post_attention_layernorm) |
//! | `blocks.{l}.hook_resid_mid` | [B,T,d] | residual after the attention add |
//! | `blocks.{l}.mlp.hook_pre` | [B,T,ff] | gate projection before the activation (GPT-2: c_fc output) |
//! | `blocks.{l}.mlp.hook_pre_linear` | [B,T,ff] | up projection (gated MLPs only) |
//! | `blocks.{l}.mlp.hook_post` | [B,T,ff] | activation output (× up projection when gated), input of down_proj |
//! | `blocks.{l}.hook_mlp_out` | [B,T,d] | what the MLP adds to the residual (Gemma-2: after post_feedforward_layernorm) |
//! | `blocks.{l}.hook_resid_post` | [B,T,d] | residual leaving block l |
//! | `ln_final.hook_scale` | [B,T,1] | the final norm's divisor √(mean(x²)+ε) (LayerNorm: √(var+ε)) |
//! | `ln_final.hook_normalized` | [B,T,d] | the final norm's output, γ and β included: what the reward head reads |

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Embed,
    PosEmbed,
    ResidPre(usize),
    Q(usize),
    K(usize),
    V(usize),
    RotQ(usize),
    RotK(usize),
    AttnScores(usize),
    Pattern(usize),
    Z(usize),
    AttnOut(usize),
    ResidMid(usize),
    MlpPre(usize),
    MlpPreLinear(usize),
    MlpPost(usize),
    MlpOut(usize),
    ResidPost(usize),
    FinalScale,
    FinalNormalized,
}

/// Which axis of a site's tensor holds positions and heads (batch is always axis 0).
pub struct Axes {
    pub position: Option<usize>,
    pub head: Option<usize>,
}

impl Site {
    pub fn layer(&self) -> Option<usize> {
        use Site::*;
        match *self {
            Embed | PosEmbed | FinalScale | FinalNormalized => None,
            ResidPre(l) | Q(l) | K(l) | V(l) | RotQ(l) | RotK(l) | AttnScores(l) | Pattern(l) | Z(l) | AttnOut(l)
            | ResidMid(l) | MlpPre(l) | MlpPreLinear(l) | MlpPost(l) | MlpOut(l) | ResidPost(l) => Some(l),
        }
    }

    pub fn axes(&self) -> Axes {
        use Site::*;
        match self {
            Q(_) | K(_) | V(_) | RotQ(_) | RotK(_) | Z(_) => Axes { position: Some(1), head: Some(2) },
            AttnScores(_) | Pattern(_) => Axes { position: Some(2), head: Some(1) },
            _ => Axes { position: Some(1), head: None },
        }
    }

    fn suffix(&self) -> &'static str {
        use Site::*;
        match self {
            Embed => "hook_embed",
            PosEmbed => "hook_pos_embed",
            ResidPre(_) => "hook_resid_pre",
            Q(_) => "attn.hook_q",
            K(_) => "attn.hook_k",
            V(_) => "attn.hook_v",
            RotQ(_) => "attn.hook_rot_q",
            RotK(_) => "attn.hook_rot_k",
            AttnScores(_) => "attn.hook_attn_scores",
            Pattern(_) => "attn.hook_pattern",
            Z(_) => "attn.hook_z",
            AttnOut(_) => "hook_attn_out",
            ResidMid(_) => "hook_resid_mid",
            MlpPre(_) => "mlp.hook_pre",
            MlpPreLinear(_) => "mlp.hook_pre_linear",
            MlpPost(_) => "mlp.hook_post",
            MlpOut(_) => "hook_mlp_out",
            ResidPost(_) => "hook_resid_post",
            FinalScale => "ln_final.hook_scale",
            FinalNormalized => "ln_final.hook_normalized",
        }
    }

    pub fn name(&self) -> String {
        match self.layer() {
            Some(l) => format!("blocks.{l}.{}", self.suffix()),
            None => self.suffix().to_string(),
        }
    }

    /// Parses a TransformerLens name; also accepts candle-mi's spellings
    /// (`attn.hook_scores`, `hook_final_norm`).
    pub fn parse(name: &str) -> Option<Site> {
        use Site::*;
        match name {
            "hook_embed" => return Some(Embed),
            "hook_pos_embed" => return Some(PosEmbed),
            "ln_final.hook_scale" => return Some(FinalScale),
            "ln_final.hook_normalized" | "hook_final_norm" => return Some(FinalNormalized),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.")?;
        let (l, suffix) = rest.split_once('.')?;
        let l: usize = l.parse().ok()?;
        Some(match suffix {
            "hook_resid_pre" => ResidPre(l),
            "attn.hook_q" => Q(l),
            "attn.hook_k" => K(l),
            "attn.hook_v" => V(l),
            "attn.hook_rot_q" => RotQ(l),
            "attn.hook_rot_k" => RotK(l),
            "attn.hook_attn_scores" | "attn.hook_scores" => AttnScores(l),
            "attn.hook_pattern" => Pattern(l),
            "attn.hook_z" => Z(l),
            "hook_attn_out" => AttnOut(l),
            "hook_resid_mid" => ResidMid(l),
            "mlp.hook_pre" => MlpPre(l),
            "mlp.hook_pre_linear" => MlpPreLinear(l),
            "mlp.hook_post" => MlpPost(l),
            "hook_mlp_out" => MlpOut(l),
            "hook_resid_post" => ResidPost(l),
            _ => return None,
        })
    }

    /// Every site a model with this shape fires, in forward order.
    pub fn all(n_layers: usize, rope: bool, learned_pos: bool, gated_mlp: bool) -> Vec<Site> {
        use Site::*;
        let mut v = vec![Embed];
        if learned_pos {
            v.push(PosEmbed);
        }
        for l in 0..n_layers {
            v.extend([ResidPre(l), Q(l), K(l), V(l)]);
            if rope {
                v.extend([RotQ(l), RotK(l)]);
            }
            v.extend([AttnScores(l), Pattern(l), Z(l), AttnOut(l), ResidMid(l), MlpPre(l)]);
            if gated_mlp {
                v.push(MlpPreLinear(l));
            }
            v.extend([MlpPost(l), MlpOut(l), ResidPost(l)]);
        }
        v.extend([FinalScale, FinalNormalized]);
        v
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A set of sites given as exact names or globs (`*` any run of characters, `?` one character),
/// e.g. `blocks.*.hook_resid_post` or `*hook_z`.
#[derive(Debug, Clone, Default)]
pub struct SiteFilter {
    patterns: Vec<String>,
}

impl SiteFilter {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self { patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect() }
    }
    pub fn all() -> Self {
        Self::new(&["*"])
    }
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
    pub fn matches(&self, site: &Site) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let name = site.name();
        // Accept the alias spellings as written by the user.
        self.patterns.iter().any(|p| glob_match(p, &name) || Site::parse(p).as_ref() == Some(site))
    }
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Iterative glob matcher: `*` matches any run (dots included), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Site::all(3, true, true, true) {
            assert_eq!(Site::parse(&s.name()), Some(s), "{s}");
        }
        assert_eq!(Site::parse("blocks.2.attn.hook_scores"), Some(Site::AttnScores(2)));
        assert_eq!(Site::parse("hook_final_norm"), Some(Site::FinalNormalized));
        assert_eq!(Site::parse("blocks.x.hook_resid_pre"), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("blocks.*.hook_resid_post", "blocks.12.hook_resid_post"));
        assert!(!glob_match("blocks.*.hook_resid_post", "blocks.12.hook_resid_pre"));
        assert!(glob_match("*hook_z", "blocks.0.attn.hook_z"));
        assert!(glob_match("blocks.?.hook_*", "blocks.3.hook_mlp_out"));
        assert!(!glob_match("blocks.?.hook_*", "blocks.10.hook_mlp_out"));
        let f = SiteFilter::new(&["blocks.1.*"]);
        assert!(f.matches(&Site::Pattern(1)) && !f.matches(&Site::Pattern(0)));
        assert!(!SiteFilter::default().matches(&Site::Embed));
    }
}
