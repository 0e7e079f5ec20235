//! Interning JSON values into small integers, so checkers compare and hash
//! `u32`s instead of `serde_json::Value`s.

use std::collections::HashMap;

use serde_json::Value;

/// Maps each distinct JSON value to a dense id; `null` is always id 0.
#[derive(Debug)]
pub(crate) struct Interner {
    ids: HashMap<String, u32>,
    values: Vec<Value>,
}

/// The id of `null`.
pub(crate) const NULL: u32 = 0;

impl Default for Interner {
    fn default() -> Self {
        let mut me = Self {
            ids: HashMap::new(),
            values: Vec::new(),
        };
        me.id(&Value::Null);
        me
    }
}

impl Interner {
    pub fn id(&mut self, v: &Value) -> u32 {
        let text = v.to_string();
        if let Some(&id) = self.ids.get(&text) {
            return id;
        }
        let id = self.values.len() as u32;
        self.ids.insert(text, id);
        self.values.push(v.clone());
        id
    }

    pub fn value(&self, id: u32) -> &Value {
        self.values.get(id as usize).unwrap_or(&Value::Null)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_values_share_an_id_and_null_is_zero() {
        let mut i = Interner::default();
        assert_eq!(i.id(&Value::Null), NULL);
        let a = i.id(&json!(5));
        assert_eq!(i.id(&json!(5)), a);
        assert_ne!(i.id(&json!("5")), a);
        assert_eq!(i.value(a), &json!(5));
        assert_eq!(i.len(), 3);
    }
}
