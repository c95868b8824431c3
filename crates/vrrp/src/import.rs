//! keepalived.conf → TOML converter (placeholder; filled in below).

/// Result of a conversion.
pub struct Imported {
    pub toml: String,
    pub warnings: Vec<String>,
    pub instances: usize,
}

pub fn convert(_text: &str) -> Imported {
    Imported {
        toml: String::new(),
        warnings: vec![],
        instances: 0,
    }
}
