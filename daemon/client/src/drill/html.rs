//! The human half of a drill report: one self-contained HTML page.
//! (Being written: issue 21.)

use super::Report;

/// The page for `report`: no external resources.
pub fn render(report: &Report) -> String {
    format!("<!doctype html><title>drd drill {}</title>", report.id)
}
