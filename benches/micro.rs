// Placeholder until the criterion suite lands (helper-5 owns this file).
fn main() {}
