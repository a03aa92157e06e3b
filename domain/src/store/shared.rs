//! Per-handle state of the rules, kept without the store naming their types.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// One value per type, made on first use and shared by every clone of the handle
/// (as `http::Extensions`, but shared and made lazily).
#[derive(Clone, Default)]
pub struct Shared(Arc<RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Shared {
    pub fn get_or_default<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let key = TypeId::of::<T>();
        let found = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let any = match found {
            Some(any) => any,
            None => self
                .0
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_insert_with(|| Arc::new(T::default()))
                .clone(),
        };
        any.downcast::<T>()
            .unwrap_or_else(|_| unreachable!("a value is kept under its own type"))
    }
}
