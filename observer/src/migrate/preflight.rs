//! Preflight checks: is this cluster ready for a live migration to Cilium?
// TEMP-STUB
pub struct Check;
pub async fn run(_ctx: &super::context::Context) -> crate::Result<Vec<Check>> {
    todo!()
}
pub fn render(_c: &[Check]) -> String {
    todo!()
}
pub fn blocking(_c: &[Check]) -> bool {
    todo!()
}
