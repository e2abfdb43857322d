//! Cursor pagination shared by the backends.

use crate::model::Page;

/// Page size bounds for every listing.
pub(crate) fn clamp_limit(limit: u32) -> u32 {
    limit.clamp(1, 500)
}

/// Trims the extra row fetched to detect a next page and returns the page with its cursor.
pub(crate) fn paginate<T>(
    items: &mut Vec<T>,
    limit: u32,
    cursor_of: impl Fn(&T) -> String,
) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    Page {
        next_cursor: if more {
            items.last().map(cursor_of)
        } else {
            None
        },
        items: std::mem::take(items),
    }
}
