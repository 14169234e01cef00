//! Tables for people, kubectl's way: no borders, a header of the JSON's
//! field names, names left and figures right, columns fitted to their
//! widest cell. Rendered by comfy-table, shared by every command.
use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

/// A table of `columns`, those from `figures_from` on right-aligned.
pub fn new(columns: &[&str], figures_from: usize) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(columns.iter().copied());
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 3));
        if i >= figures_from {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The table's lines, each ending in a newline, without trailing blanks.
pub fn render(table: &Table) -> String {
    table
        .lines()
        .map(|l| l.trim_end().to_string() + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_fit_names_left_figures_right() {
        let mut t = super::new(&["node", "sent"], 1);
        t.add_row(["control-plane", "7"]);
        t.add_row(["w1", "12345"]);
        assert_eq!(
            super::render(&t),
            "node             sent\ncontrol-plane       7\nw1              12345\n"
        );
    }
}
