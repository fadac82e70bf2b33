
type Words = (u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32);

#[inline(always)]
fn words(b: &[u8; 64]) -> Words {
    let w = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    (w(0), w(1), w(2), w(3), w(4), w(5), w(6), w(7), w(8), w(9), w(10), w(11), w(12), w(13), w(14), w(15))
}

// F: (b & c) | (!b & d), as d ^ (b & (c ^ d)): `c ^ d` is ready before `b`.
#[inline(always)]
fn step_f(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m.wrapping_add(k)).wrapping_add(d ^ (b & (c ^ d)));
    b.wrapping_add(t.rotate_left(s))
}

// G: (b & d) | (c & !d); the two halves share no bit, so `|` is `+` and the half that does
// not need `b` joins the sum early.
#[inline(always)]
fn step_g(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m.wrapping_add(k)).wrapping_add(c & !d).wrapping_add(b & d);
    b.wrapping_add(t.rotate_left(s))
}

// H: b ^ c ^ d, with `c ^ d` first.
#[inline(always)]
fn step_h(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m.wrapping_add(k)).wrapping_add((c ^ d) ^ b);
    b.wrapping_add(t.rotate_left(s))
}

// I: c ^ (b | !d).
#[inline(always)]
fn step_i(a: u32, b: u32, c: u32, d: u32, m: u32, k: u32, s: u32) -> u32 {
    let t = a.wrapping_add(m.wrapping_add(k)).wrapping_add(c ^ (b | !d));
    b.wrapping_add(t.rotate_left(s))
}
