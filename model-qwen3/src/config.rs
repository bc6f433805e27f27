//! `config.json` and `generation_config.json` of dense Qwen3 checkpoints.

use std::path::Path;

use serde_json::{Map, Value};

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
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// The checkpoint's dtype as written (`torch_dtype` or `dtype`), if any.
    pub torch_dtype: Option<String>,
}

/// Sizes beyond which a config is refused as absurd rather than allocated.
const MAX_DIM: usize = 1 << 20;
/// Parameters beyond which a config is refused (2^40, about 1.1 trillion).
const MAX_PARAMETERS: u128 = 1 << 40;

impl Qwen3Config {
    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        Self::from_json_value(&read_json(path)?)
    }

    /// Parse and validate a `config.json` text.
    pub fn from_json_str(text: &str) -> Result<Self, ModelError> {
        let value = serde_json::from_str(text)
            .map_err(|e| ModelError::Json { path: "config.json".into(), problem: e.to_string() })?;
        Self::from_json_value(&value)
    }

    fn from_json_value(value: &Value) -> Result<Self, ModelError> {
        let Some(obj) = value.as_object() else {
            return Err(config_error("(top level)", value, "expected a JSON object"));
        };
        let model_type = string_field(obj, "model_type")?;
        if model_type != "qwen3" {
            return Err(config_error(
                "model_type",
                &Value::String(model_type),
                "only \"qwen3\" (dense Qwen3) is implemented",
            ));
        }
        reject_unless(
            obj,
            "attention_bias",
            |v| v.is_null() || v == &Value::Bool(false),
            "attention biases are not implemented",
        )?;
        reject_unless(
            obj,
            "use_sliding_window",
            |v| v.is_null() || v == &Value::Bool(false),
            "sliding-window attention is not implemented",
        )?;
        reject_unless(
            obj,
            "hidden_act",
            |v| v.is_null() || v.as_str() == Some("silu"),
            "only \"silu\" is implemented",
        )?;
        if let Some(kinds) = obj.get("layer_types").and_then(Value::as_array)
            && let Some(other) = kinds.iter().find(|k| k.as_str() != Some("full_attention"))
        {
            return Err(config_error("layer_types", other, "only \"full_attention\" layers are implemented"));
        }
        let rope_theta = rope_theta(obj)?;
        let hidden_size = dim_field(obj, "hidden_size")?;
        let num_attention_heads = dim_field(obj, "num_attention_heads")?;
        let num_key_value_heads = match obj.get("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            Some(_) => dim_field(obj, "num_key_value_heads")?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(config_error(
                "num_key_value_heads",
                &obj["num_key_value_heads"],
                &format!("must divide num_attention_heads ({num_attention_heads})"),
            ));
        }
        let head_dim = match obj.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(config_error(
                        "hidden_size",
                        &obj["hidden_size"],
                        "no head_dim given and hidden_size is not a multiple of num_attention_heads",
                    ));
                }
                hidden_size / num_attention_heads
            }
            Some(_) => dim_field(obj, "head_dim")?,
        };
        if head_dim % 2 != 0 {
            return Err(config_error(
                "head_dim",
                &Value::from(head_dim),
                "must be even for rotary embeddings",
            ));
        }
        let rms_norm_eps = float_field(obj, "rms_norm_eps", Some(1e-6))?;
        let config = Qwen3Config {
            hidden_size,
            num_hidden_layers: dim_field(obj, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            intermediate_size: dim_field(obj, "intermediate_size")?,
            vocab_size: dim_field(obj, "vocab_size")?,
            rope_theta,
            rms_norm_eps,
            max_position_embeddings: dim_field(obj, "max_position_embeddings")?,
            tie_word_embeddings: match obj.get("tie_word_embeddings") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(config_error("tie_word_embeddings", other, "expected true or false"));
                }
            },
            torch_dtype: ["torch_dtype", "dtype"]
                .iter()
                .find_map(|k| obj.get(*k)?.as_str().map(str::to_owned)),
        };
        let parameters = config.parameters_exact();
        if parameters > MAX_PARAMETERS {
            return Err(config_error(
                "hidden_size",
                &obj["hidden_size"],
                &format!("with these sizes the model would have {parameters} parameters, more than 2^40"),
            ));
        }
        Ok(config)
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
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationConfig {
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
    /// Suggested sampling defaults, where the checkpoint gives them.
    pub temperature: Option<f32>,
    /// Suggested top-k.
    pub top_k: Option<usize>,
    /// Suggested top-p.
    pub top_p: Option<f32>,
}

impl GenerationConfig {
    /// Read `generation_config.json`; a missing file gives no EOS and no defaults.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        if !path.exists() {
            return Ok(GenerationConfig::default());
        }
        let value = read_json(path)?;
        let invalid = |field: &'static str, v: &Value| ModelError::Json {
            path: path.to_owned(),
            problem: format!("{field} = {v}: expected a token id or a list of token ids"),
        };
        let eos_token_ids = match value.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|id| as_token(id).ok_or_else(|| invalid("eos_token_id", id)))
                .collect::<Result<_, _>>()?,
            Some(id) => vec![as_token(id).ok_or_else(|| invalid("eos_token_id", id))?],
        };
        Ok(GenerationConfig {
            eos_token_ids,
            temperature: value.get("temperature").and_then(Value::as_f64).map(|t| t as f32),
            top_k: value.get("top_k").and_then(Value::as_u64).map(|k| k as usize),
            top_p: value.get("top_p").and_then(Value::as_f64).map(|p| p as f32),
        })
    }
}

fn as_token(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|id| u32::try_from(id).ok())
}

pub(crate) fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::Json { path: path.to_owned(), problem: e.to_string() })
}

fn config_error(field: &'static str, value: &Value, problem: &str) -> ModelError {
    ModelError::Config { field, value: value.to_string(), problem: problem.to_owned() }
}

fn string_field(obj: &Map<String, Value>, field: &'static str) -> Result<String, ModelError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(config_error(field, other, "expected a string")),
        None => Err(config_error(field, &Value::Null, "missing")),
    }
}

fn dim_field(obj: &Map<String, Value>, field: &'static str) -> Result<usize, ModelError> {
    let value = obj.get(field).ok_or_else(|| config_error(field, &Value::Null, "missing"))?;
    match value.as_u64() {
        Some(0) => Err(config_error(field, value, "must be at least 1")),
        Some(n) if n as usize > MAX_DIM && field != "max_position_embeddings" => {
            Err(config_error(field, value, &format!("absurdly large (limit {MAX_DIM})")))
        }
        Some(n) => usize::try_from(n).map_err(|_| config_error(field, value, "too large")),
        None => Err(config_error(field, value, "expected a positive integer")),
    }
}

fn float_field(
    obj: &Map<String, Value>,
    field: &'static str,
    default: Option<f64>,
) -> Result<f64, ModelError> {
    match (obj.get(field), default) {
        (None | Some(Value::Null), Some(d)) => Ok(d),
        (None, None) => Err(config_error(field, &Value::Null, "missing")),
        (Some(v), _) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(config_error(field, v, "expected a positive number")),
        },
    }
}

fn reject_unless(
    obj: &Map<String, Value>,
    field: &'static str,
    accepted: impl Fn(&Value) -> bool,
    problem: &str,
) -> Result<(), ModelError> {
    match obj.get(field) {
        Some(v) if !accepted(v) => Err(config_error(field, v, problem)),
        _ => Ok(()),
    }
}

/// `rope_theta` at the top level (transformers 4) or in `rope_parameters` (transformers 5);
/// any RoPE scaling other than the default is refused.
fn rope_theta(obj: &Map<String, Value>) -> Result<f64, ModelError> {
    for field in ["rope_scaling", "rope_parameters"] {
        if let Some(Value::Object(params)) = obj.get(field) {
            let kind = params.get("rope_type").or_else(|| params.get("type"));
            if let Some(kind) = kind.filter(|k| k.as_str() != Some("default")) {
                let field = if field == "rope_scaling" {
                    "rope_scaling.rope_type"
                } else {
                    "rope_parameters.rope_type"
                };
                return Err(config_error(field, kind, "only the default RoPE is implemented"));
            }
        }
    }
    if let Some(theta) = obj.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
        return theta
            .as_f64()
            .filter(|t| *t > 0.0)
            .ok_or_else(|| config_error("rope_parameters.rope_theta", theta, "expected a positive number"));
    }
    float_field(obj, "rope_theta", Some(10000.0))
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
                with("rope_scaling", r#"{"rope_type": "yarn", "factor": 4.0}"#),
                "config.json: rope_scaling.rope_type = \"yarn\": only the default RoPE is implemented",
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
