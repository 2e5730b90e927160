//! A model summary in the manner of torchinfo: each block's output shape and
//! parameter count, and the totals.

use std::fmt;

/// One block of a [`Summary`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SummaryRow {
    /// The block's name (its prefix in the weight names).
    pub name: String,
    /// Output shape for the summarised input.
    pub output_shape: Vec<usize>,
    /// Trainable parameters in the block.
    pub params: usize,
}

/// Per-block output shapes and parameter counts of a network.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Registry name of the network.
    pub model: String,
    /// The configuration as JSON.
    pub config: String,
    /// Input shape used.
    pub input_shape: Vec<usize>,
    /// Output shape.
    pub output_shape: Vec<usize>,
    /// One row per block, in execution order.
    pub rows: Vec<SummaryRow>,
    /// Total trainable parameters.
    pub total_params: usize,
    /// Elements of non-trainable buffers (BatchNorm running statistics).
    pub buffer_elements: usize,
}

/// `31037633` → `31,037,633`.
pub fn thousands(n: usize) -> String {
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

fn shape(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = "=".repeat(66);
        writeln!(f, "{line}")?;
        writeln!(f, "{:<24}{:<28}{:>14}", "Block", "Output shape", "Param #")?;
        writeln!(f, "{line}")?;
        writeln!(
            f,
            "{:<24}{:<28}{:>14}",
            format!("{} (input)", self.model),
            shape(&self.input_shape),
            "--"
        )?;
        for r in &self.rows {
            let p = if r.params == 0 {
                "--".to_string()
            } else {
                thousands(r.params)
            };
            writeln!(f, "├─{:<22}{:<28}{:>14}", r.name, shape(&r.output_shape), p)?;
        }
        writeln!(f, "{line}")?;
        writeln!(f, "Output shape: {}", shape(&self.output_shape))?;
        writeln!(f, "Total params: {}", thousands(self.total_params))?;
        writeln!(f, "Trainable params: {}", thousands(self.total_params))?;
        writeln!(
            f,
            "Non-trainable buffers: {} elements",
            thousands(self.buffer_elements)
        )?;
        writeln!(
            f,
            "Params size (MB): {:.2}",
            self.total_params as f64 * 4.0 / 1e6
        )?;
        writeln!(f, "Config: {}", self.config)?;
        write!(f, "{line}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(31037633), "31,037,633");
        assert_eq!(super::thousands(977), "977");
        assert_eq!(super::thousands(1000), "1,000");
    }
}
