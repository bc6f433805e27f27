//! `config.json` and `generation_config.json` of dense Qwen3 checkpoints, read with serde: each
//! field has the type it must have, and an error names the field, the value and the problem.

use std::path::Path;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::ModelError;

/// The architecture of a dense Qwen3 model, read from its Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Values per head; explicit in Qwen3 (Qwen3-0.6B: 16 heads of 128 with hidden 1024).
    pub head_dim: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// YaRN context extension (`rope_scaling` with `rope_type: "yarn"`); `None`: plain RoPE.
    pub rope_scaling: Option<Yarn>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// The checkpoint's dtype as written (`torch_dtype` or `dtype`), if any.
    pub torch_dtype: Option<String>,
}

/// YaRN (Peng et al., 2023), as Qwen3 extends its context (factor 4 over 32,768 positions):
/// RoPE frequencies blended between the original and `factor`-times interpolated ones, by a
/// ramp over the dimensions whose wavelengths fall between `beta_fast` and `beta_slow`
/// rotations of the original context; cos and sin scaled by `attention_factor`. Computed as HF
/// transformers and vLLM compute it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// How much longer the context becomes.
    pub factor: f64,
    /// The context the model was trained for (default: `max_position_embeddings`).
    pub original_max_position_embeddings: usize,
    /// Rotations over the original context above which a dimension keeps its frequency (32).
    pub beta_fast: f64,
    /// Rotations below which a dimension is fully interpolated (1).
    pub beta_slow: f64,
    /// The factor on cos and sin: given, or `0.1 ln(factor) + 1` (with `mscale` and
    /// `mscale_all_dim`, their ratio of that, as DeepSeek's configs give it).
    pub attention_factor: f64,
    /// Whether the ramp's ends are rounded to whole dimensions (true).
    pub truncate: bool,
}

/// Sizes beyond which a config is refused as absurd rather than allocated.
const MAX_DIM: usize = 1 << 20;
/// Parameters beyond which a config is refused (2^40, about 1.1 trillion).
const MAX_PARAMETERS: u128 = 1 << 40;

/// A positive integer field.
#[derive(Debug, Clone, Copy)]
struct Positive(usize);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)?.as_u64() {
            Some(0) => Err(D::Error::custom("must be at least 1")),
            Some(n) => usize::try_from(n).map(Positive).map_err(|_| D::Error::custom("too large")),
            None => Err(D::Error::custom("expected a positive integer")),
        }
    }
}

/// A positive, finite number field.
#[derive(Debug, Clone, Copy)]
struct PositiveFloat(f64);

impl<'de> Deserialize<'de> for PositiveFloat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)?.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(PositiveFloat(x)),
            _ => Err(D::Error::custom("expected a positive number")),
        }
    }
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
#[derive(Debug, Deserialize)]
struct RawRope {
    rope_type: Option<Value>,
    #[serde(rename = "type")]
    legacy_type: Option<Value>,
    rope_theta: Option<PositiveFloat>,
    factor: Option<PositiveFloat>,
    original_max_position_embeddings: Option<Positive>,
    beta_fast: Option<PositiveFloat>,
    beta_slow: Option<PositiveFloat>,
    attention_factor: Option<PositiveFloat>,
    mscale: Option<PositiveFloat>,
    mscale_all_dim: Option<PositiveFloat>,
    truncate: Option<bool>,
}

impl RawRope {
    fn kind(&self) -> Option<&Value> {
        self.rope_type.as_ref().or(self.legacy_type.as_ref())
    }

    /// YaRN's parameters with HF's defaults (transformers 5: a missing factor is
    /// `max_position_embeddings / original_max_position_embeddings`); `field` names this object
    /// in errors.
    fn yarn(&self, field: &str, max_position_embeddings: usize) -> Result<Yarn, ModelError> {
        let original = self.original_max_position_embeddings.map(|p| p.0);
        let factor = match (self.factor, original) {
            (Some(factor), _) => factor.0,
            (None, Some(original)) => max_position_embeddings as f64 / original as f64,
            (None, None) => {
                return Err(config_error(
                    &format!("{field}.factor"),
                    Value::Null,
                    "missing (YaRN needs its factor, or original_max_position_embeddings)",
                ));
            }
        };
        let mscale = |scale: f64| if factor <= 1.0 { 1.0 } else { 0.1 * scale * factor.ln() + 1.0 };
        let attention_factor = match (self.attention_factor, self.mscale, self.mscale_all_dim) {
            (Some(given), ..) => given.0,
            (None, Some(m), Some(all)) => mscale(m.0) / mscale(all.0),
            _ => mscale(1.0),
        };
        Ok(Yarn {
            factor,
            original_max_position_embeddings: original.unwrap_or(max_position_embeddings),
            beta_fast: self.beta_fast.map_or(32.0, |b| b.0),
            beta_slow: self.beta_slow.map_or(1.0, |b| b.0),
            attention_factor,
            truncate: self.truncate.unwrap_or(true),
        })
    }
}

/// `config.json` as written: every field this implementation reads, typed; the others ignored.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    attention_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    hidden_act: Option<String>,
    layer_types: Option<Vec<String>>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    rope_theta: Option<PositiveFloat>,
    rms_norm_eps: Option<PositiveFloat>,
    hidden_size: Option<Positive>,
    num_hidden_layers: Option<Positive>,
    num_attention_heads: Option<Positive>,
    num_key_value_heads: Option<Positive>,
    head_dim: Option<Positive>,
    intermediate_size: Option<Positive>,
    vocab_size: Option<Positive>,
    max_position_embeddings: Option<Positive>,
    tie_word_embeddings: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

impl Qwen3Config {
    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        Self::from_json_value(read_json(path)?)
    }

    /// Parse and validate a `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self, ModelError> {
        let value = serde_json::from_str(text)
            .map_err(|e| ModelError::Json { path: "config.json".into(), problem: e.to_string() })?;
        Self::from_json_value(value)
    }

    fn from_json_value(value: Value) -> Result<Self, ModelError> {
        let raw: RawConfig = serde_path_to_error::deserialize(&value).map_err(|e| {
            let field = e.path().to_string();
            let problem = e.inner().to_string();
            let at = field.split('.').try_fold(&value, |v, key| v.get(key));
            let shown = at.map_or("null".into(), Value::to_string);
            let field = if field == "." { "(top level)".to_owned() } else { field };
            ModelError::Config { field, value: shown, problem }
        })?;
        raw.validate()
    }
}

fn config_error(field: &str, value: impl Into<Value>, problem: &str) -> ModelError {
    ModelError::Config {
        field: field.to_owned(),
        value: value.into().to_string(),
        problem: problem.to_owned(),
    }
}

/// The value of a required field, or the error that names it.
fn required(field: &str, value: Option<Positive>) -> Result<usize, ModelError> {
    value.map(|p| p.0).ok_or_else(|| config_error(field, Value::Null, "missing"))
}

impl RawConfig {
    /// Check what the types cannot say, and fill in Qwen3's defaults.
    fn validate(self) -> Result<Qwen3Config, ModelError> {
        match self.model_type.as_deref() {
            Some("qwen3") => {}
            Some(other) => {
                return Err(config_error("model_type", other, "only \"qwen3\" (dense Qwen3) is implemented"));
            }
            None => return Err(config_error("model_type", Value::Null, "missing")),
        }
        if self.attention_bias == Some(true) {
            return Err(config_error("attention_bias", true, "attention biases are not implemented"));
        }
        if self.use_sliding_window == Some(true) {
            return Err(config_error(
                "use_sliding_window",
                true,
                "sliding-window attention is not implemented",
            ));
        }
        if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(config_error("hidden_act", act, "only \"silu\" is implemented"));
        }
        if let Some(other) = self.layer_types.iter().flatten().find(|k| *k != "full_attention") {
            return Err(config_error(
                "layer_types",
                other.as_str(),
                "only \"full_attention\" layers are implemented",
            ));
        }
        let rope_theta = self.rope_theta();
        let max_position_embeddings = required("max_position_embeddings", self.max_position_embeddings)?;
        let rope_scaling = self.rope_scaling(max_position_embeddings)?;
        let hidden_size = required("hidden_size", self.hidden_size)?;
        let num_attention_heads = required("num_attention_heads", self.num_attention_heads)?;
        let num_key_value_heads = self.num_key_value_heads.map_or(num_attention_heads, |p| p.0);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(config_error(
                "num_key_value_heads",
                num_key_value_heads,
                &format!("must divide num_attention_heads ({num_attention_heads})"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(Positive(d)) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(config_error(
                    "hidden_size",
                    hidden_size,
                    "no head_dim given and hidden_size is not a multiple of num_attention_heads",
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(config_error("head_dim", head_dim, "must be even for rotary embeddings"));
        }
        let config = Qwen3Config {
            hidden_size,
            num_hidden_layers: required("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            intermediate_size: required("intermediate_size", self.intermediate_size)?,
            vocab_size: required("vocab_size", self.vocab_size)?,
            rope_theta,
            rope_scaling,
            rms_norm_eps: self.rms_norm_eps.map_or(1e-6, |e| e.0),
            max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            torch_dtype: self.torch_dtype.or(self.dtype),
        };
        for (field, size) in [
            ("hidden_size", config.hidden_size),
            ("num_hidden_layers", config.num_hidden_layers),
            ("num_attention_heads", config.num_attention_heads),
            ("num_key_value_heads", config.num_key_value_heads),
            ("head_dim", config.head_dim),
            ("intermediate_size", config.intermediate_size),
            ("vocab_size", config.vocab_size),
        ] {
            if size > MAX_DIM {
                return Err(config_error(field, size, &format!("absurdly large (limit {MAX_DIM})")));
            }
        }
        let parameters = config.parameters_exact();
        if parameters > MAX_PARAMETERS {
            return Err(config_error(
                "hidden_size",
                hidden_size,
                &format!("with these sizes the model would have {parameters} parameters, more than 2^40"),
            ));
        }
        Ok(config)
    }

    /// `rope_theta` at the top level (transformers 4) or in `rope_parameters` (transformers 5).
    fn rope_theta(&self) -> f64 {
        let nested = self.rope_parameters.as_ref().and_then(|r| r.rope_theta);
        nested.or(self.rope_theta).map_or(10000.0, |t| t.0)
    }

    /// YaRN from `rope_scaling` or `rope_parameters`; the default RoPE is `None`, and any other
    /// scaling is refused.
    fn rope_scaling(&self, max_position_embeddings: usize) -> Result<Option<Yarn>, ModelError> {
        let mut yarn = None;
        for (field, rope) in
            [("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)]
        {
            let Some(rope) = rope else { continue };
            match rope.kind().map(|k| (k, k.as_str())) {
                None | Some((_, Some("default"))) => {}
                Some((_, Some("yarn"))) => yarn = Some(rope.yarn(field, max_position_embeddings)?),
                Some((kind, _)) => {
                    return Err(config_error(
                        &format!("{field}.rope_type"),
                        kind.clone(),
                        "only the default RoPE and \"yarn\" are implemented",
                    ));
                }
            }
        }
        Ok(yarn)
    }
}

impl Qwen3Config {
    /// The longest context the model runs: `max_position_embeddings`, or under YaRN the original
    /// context times the factor (as vLLM derives it: 131,072 for Qwen3 at factor 4).
    pub fn context_length(&self) -> usize {
        match &self.rope_scaling {
            Some(yarn) => (yarn.original_max_position_embeddings as f64 * yarn.factor) as usize,
            None => self.max_position_embeddings,
        }
    }

    /// RoPE's inverse frequencies, one per pair of dimensions, as HF computes them in f32
    /// (`1 / theta^(2i / head_dim)`, blended by YaRN when it is on), and the factor on cos and sin.
    pub fn rope(&self) -> (Vec<f32>, f32) {
        let d = self.head_dim;
        let theta = self.rope_theta as f32;
        let base: Vec<f32> = (0..d / 2).map(|i| theta.powf((2 * i) as f32 / d as f32)).collect();
        let Some(yarn) = &self.rope_scaling else {
            return (base.iter().map(|f| 1.0 / f).collect(), 1.0);
        };
        // The dimension whose wavelength makes `rotations` turns over the original context.
        let dim_of = |rotations: f64| {
            let positions = yarn.original_max_position_embeddings as f64;
            d as f64 * (positions / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * self.rope_theta.ln())
        };
        let (mut low, mut high) = (dim_of(yarn.beta_fast), dim_of(yarn.beta_slow));
        if yarn.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0) as f32, high.min(d as f64 - 1.0) as f32);
        if low == high {
            high += 0.001;
        }
        let factor = yarn.factor as f32;
        let inv_freq = base
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolated = 1.0 - ramp;
                (1.0 / (factor * f)) * (1.0 - extrapolated) + (1.0 / f) * extrapolated
            })
            .collect();
        (inv_freq, yarn.attention_factor as f32)
    }

    /// Columns of the packed Q, K, V projection: `(heads + 2 * kv_heads) * head_dim`.
    pub fn qkv_size(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }

    /// Query heads that share one kv head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Parameters of the model (tied embeddings counted once).
    pub fn num_parameters(&self) -> usize {
        // Configs are validated to stay below MAX_PARAMETERS, so this fits.
        self.parameters_exact() as usize
    }

    fn parameters_exact(&self) -> u128 {
        let [h, i, d, heads, kv, vocab, layers] = [
            self.hidden_size,
            self.intermediate_size,
            self.head_dim,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.vocab_size,
            self.num_hidden_layers,
        ]
        .map(|n| n as u128);
        let attention = h * (heads + 2 * kv) * d + heads * d * h + 2 * d;
        let layer = attention + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { vocab * h };
        vocab * h + layers * layer + h + head
    }
}

/// The parts of `generation_config.json` the engine uses.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// End-of-sequence tokens (`eos_token_id`: one id or a list).
    #[serde(rename = "eos_token_id", deserialize_with = "one_or_many")]
    pub eos_token_ids: Vec<u32>,
    /// Suggested sampling defaults, where the checkpoint gives them.
    pub temperature: Option<f32>,
    /// Suggested top-k.
    pub top_k: Option<usize>,
    /// Suggested top-p.
    pub top_p: Option<f32>,
    /// Suggested min-p.
    pub min_p: Option<f32>,
    /// Suggested repetition penalty.
    pub repetition_penalty: Option<f32>,
}

impl GenerationConfig {
    /// Read `generation_config.json`; a missing file gives no EOS and no defaults.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        if !path.exists() {
            return Ok(GenerationConfig::default());
        }
        read_json(path)
    }
}

/// A token id, a list of them, or null.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    match Option::<OneOrMany>::deserialize(deserializer) {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(OneOrMany::One(id))) => Ok(vec![id]),
        Ok(Some(OneOrMany::Many(ids))) => Ok(ids),
        Err(_) => Err(D::Error::custom("expected a token id or a list of token ids")),
    }
}

/// Read a JSON file into `T`, naming the file (and serde's line and column) on failure.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::Json { path: path.to_owned(), problem: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3_0_6B: &str = r#"{
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
        "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
        "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
    }"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(QWEN3_0_6B).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn parses_qwen3_0_6b() {
        let c = Qwen3Config::from_json_str(QWEN3_0_6B).unwrap();
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.head_dim, c.num_key_value_heads),
            (1024, 16, 128, 8)
        );
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.tie_word_embeddings);
        // 0.6B parameters, as the name says (0.44B without the embedding).
        assert_eq!(c.num_parameters(), 596_049_920);
    }

    #[test]
    fn qwen3_yarn_extends_the_context_fourfold() {
        let yarn = r#"{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}"#;
        let c = Qwen3Config::from_json_str(&with("rope_scaling", yarn)).unwrap();
        assert_eq!(c.context_length(), 131_072);
        let (inv_freq, scale) = c.rope();
        assert!((scale - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        // The fastest dimensions keep their frequency, the slowest are divided by the factor.
        let (plain, _) = Qwen3Config { rope_scaling: None, ..c.clone() }.rope();
        assert_eq!(inv_freq[0], plain[0]);
        assert!((inv_freq[63] * 4.0 / plain[63] - 1.0).abs() < 1e-6);
        assert!(inv_freq.iter().zip(&plain).all(|(y, p)| y <= p && *y >= p / 4.0 * 0.999_999));
    }

    #[test]
    fn transformers_5_rope_parameters_are_read() {
        let text = with("rope_parameters", r#"{"rope_type": "default", "rope_theta": 5000.0}"#);
        assert_eq!(Qwen3Config::from_json_str(&text).unwrap().rope_theta, 5000.0);
    }

    #[test]
    fn unsupported_configs_name_the_field_and_value() {
        let cases = [
            (
                with("model_type", r#""llama""#),
                "config.json: model_type = \"llama\": only \"qwen3\" (dense Qwen3) is implemented",
            ),
            (
                with("attention_bias", "true"),
                "config.json: attention_bias = true: attention biases are not implemented",
            ),
            (
                with("num_key_value_heads", "3"),
                "config.json: num_key_value_heads = 3: must divide num_attention_heads (16)",
            ),
            (
                with("rope_scaling", r#"{"rope_type": "longrope", "factor": 4.0}"#),
                "config.json: rope_scaling.rope_type = \"longrope\": only the default RoPE and \"yarn\" are implemented",
            ),
            (
                with("rope_scaling", r#"{"rope_type": "yarn"}"#),
                "config.json: rope_scaling.factor = null: missing (YaRN needs its factor, or original_max_position_embeddings)",
            ),
            (
                with("hidden_size", r#""big""#),
                "config.json: hidden_size = \"big\": expected a positive integer",
            ),
            (with("hidden_size", "0"), "config.json: hidden_size = 0: must be at least 1"),
            (with("hidden_size", "-4"), "config.json: hidden_size = -4: expected a positive integer"),
            (
                with("vocab_size", "10000000000000"),
                "config.json: vocab_size = 10000000000000: absurdly large (limit 1048576)",
            ),
            (
                with("num_hidden_layers", "1000000"),
                "config.json: hidden_size = 1024: with these sizes the model would have 15731099583488 parameters, more than 2^40",
            ),
            (
                with("use_sliding_window", "true"),
                "config.json: use_sliding_window = true: sliding-window attention is not implemented",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(Qwen3Config::from_json_str(&text).unwrap_err().to_string(), message);
        }
        let mut v: Value = serde_json::from_str(QWEN3_0_6B).unwrap();
        v.as_object_mut().unwrap().remove("num_hidden_layers");
        assert_eq!(
            Qwen3Config::from_json_str(&v.to_string()).unwrap_err().to_string(),
            "config.json: num_hidden_layers = null: missing"
        );
        assert!(
            Qwen3Config::from_json_str("{not json")
                .unwrap_err()
                .to_string()
                .starts_with("config.json: key must be a string")
        );
    }
}
