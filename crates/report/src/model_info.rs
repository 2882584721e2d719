//! A model described as (label, value) rows: `reward-lens info`'s table and the audit report's.

/// `1234567` → `1,234,567`.
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The model description as (label, value) rows: `info`'s table and the audit report's.
pub fn rows(i: &reward_lens_engine::ModelInfo) -> Vec<(&'static str, String)> {
    let windows: Vec<String> = i.sliding_window.iter().map(|w| w.map_or("full".into(), |w| w.to_string())).collect();
    vec![
        ("architecture", format!("{} ({:?})", i.class_name, i.architecture)),
        ("layers", i.n_layers.to_string()),
        ("d_model", i.d_model.to_string()),
        ("heads / kv heads", format!("{} / {}", i.n_heads, i.n_kv_heads)),
        ("head_dim", i.head_dim.to_string()),
        ("d_mlp", i.d_mlp.to_string()),
        ("vocab", i.vocab_size.to_string()),
        ("context", i.max_position_embeddings.to_string()),
        ("parameters", group(i.n_params)),
        ("dtype (disk → compute)", format!("{} → {}", i.disk_dtype.as_deref().unwrap_or("?"), i.compute_dtype)),
        (
            "reward head",
            match i.num_objectives {
                Some(k) => format!("{} ({k} objectives)", i.head),
                None => i.head.clone(),
            },
        ),
        ("rope theta", i.rope_theta.map_or("— (learned positions)".into(), |t| t.to_string())),
        ("attention per layer", windows.join(", ")),
        (
            "chat template",
            if i.chat_template {
                "yes".into()
            } else {
                format!("no (plain format: {:?})", reward_lens_engine::PLAIN_FORMAT)
            },
        ),
    ]
}
