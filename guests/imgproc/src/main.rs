//! imgproc — an image-filter pipeline over a large grayscale image, reading and writing
//! files in a preopened directory.
//!
//! Stages: Gaussian blur (5x5 separable, repeated), Sobel gradient magnitude, Otsu
//! threshold, morphological closing (3x3 dilate + erode), 3x3 median of the blurred image,
//! and connected components of the edge mask (union-find). Each stage prints a checksum.
//!
//! Input: `--input PATH` reads a binary PGM (P5) or PPM (P6, converted to gray), 8 bit.
//! Without it, a SIZE x SIZE test image is synthesised from a seeded PRNG.
//! `--make-input PATH` only writes that synthetic image (PGM) and exits.
//! Output: `--output PATH` writes the closed edge mask as a PGM. Paths are guest paths,
//! e.g. `/data/in.pgm` with the host directory preopened as `/data`.
//!
//! Usage: imgproc [SIZE | --size SIZE] [--passes N] [--input PATH] [--output PATH]
//!        imgproc [SIZE] --make-input PATH

use common::{fail, Args, Fnv, Rng};
use std::io::{Read, Write};

#[derive(Clone)]
struct Image {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Image {
    fn checksum(&self) -> u64 {
        let mut f = Fnv::new();
        f.u64(self.w as u64);
        f.u64(self.h as u64);
        f.bytes(&self.px);
        f.value()
    }

    fn mean(&self) -> f64 {
        self.px.iter().map(|&p| p as u64).sum::<u64>() as f64 / self.px.len().max(1) as f64
    }
}

/// A synthetic scene: gradient, rings, rectangles, a disc, and noise.
fn synthesize(n: usize) -> Image {
    let mut rng = Rng::new(0x1AA6_E5EE);
    let mut px = vec![0u8; n * n];
    let rects: Vec<[usize; 5]> = (0..24)
        .map(|_| {
            let x = rng.below(n as u64) as usize;
            let y = rng.below(n as u64) as usize;
            let w = 8 + rng.below(n as u64 / 4) as usize;
            let h = 8 + rng.below(n as u64 / 4) as usize;
            [x, y, w, h, rng.below(256) as usize]
        })
        .collect();
    let c = n as f64 / 2.0;
    for y in 0..n {
        for x in 0..n {
            let dx = x as f64 - c;
            let dy = y as f64 - c * 0.8;
            let r = (dx * dx + dy * dy).sqrt();
            let mut v = (x + y) as f64 / (2 * n) as f64 * 90.0;
            v += 40.0 * (r / (n as f64 / 40.0)).sin();
            if r < n as f64 / 6.0 {
                v += 80.0;
            }
            for rc in &rects {
                if x >= rc[0] && x < rc[0] + rc[2] && y >= rc[1] && y < rc[1] + rc[3] {
                    v = 0.5 * v + 0.5 * rc[4] as f64;
                }
            }
            v += 12.0 * rng.gauss();
            px[y * n + x] = v.clamp(0.0, 255.0) as u8;
        }
    }
    Image { w: n, h: n, px }
}

/// Next whitespace-separated header token of a PNM file; skips `#` comments.
fn pnm_token(data: &[u8], pos: &mut usize) -> Result<String, String> {
    loop {
        while *pos < data.len() && data[*pos].is_ascii_whitespace() {
            *pos += 1;
        }
        if *pos < data.len() && data[*pos] == b'#' {
            while *pos < data.len() && data[*pos] != b'\n' {
                *pos += 1;
            }
            continue;
        }
        break;
    }
    let start = *pos;
    while *pos < data.len() && !data[*pos].is_ascii_whitespace() {
        *pos += 1;
    }
    if start == *pos {
        return Err("truncated header".into());
    }
    Ok(String::from_utf8_lossy(&data[start..*pos]).into_owned())
}

fn parse_pnm(data: &[u8]) -> Result<Image, String> {
    let mut pos = 0;
    let magic = pnm_token(data, &mut pos)?;
    let channels = match magic.as_str() {
        "P5" => 1,
        "P6" => 3,
        other => return Err(format!("unsupported format {other:?} (want P5 or P6)")),
    };
    let num = |pos: &mut usize| -> Result<usize, String> {
        let t = pnm_token(data, pos)?;
        t.parse().map_err(|_| format!("bad number {t:?}"))
    };
    let w = num(&mut pos)?;
    let h = num(&mut pos)?;
    let maxval = num(&mut pos)?;
    if maxval != 255 {
        return Err(format!("maxval {maxval} unsupported (want 255)"));
    }
    if w == 0 || h == 0 || w > 16384 || h > 16384 {
        return Err(format!("bad dimensions {w}x{h}"));
    }
    pos += 1; // the single whitespace byte after maxval
    let need = w * h * channels;
    let body = data
        .get(pos..pos + need)
        .ok_or_else(|| format!("truncated pixel data: need {need} bytes"))?;
    let px = if channels == 1 {
        body.to_vec()
    } else {
        body.chunks_exact(3)
            .map(|c| ((77 * c[0] as u32 + 150 * c[1] as u32 + 29 * c[2] as u32) >> 8) as u8)
            .collect()
    };
    Ok(Image { w, h, px })
}

fn read_image(path: &str) -> Image {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| fail(&format!("cannot read {path}: {e}")));
    parse_pnm(&data).unwrap_or_else(|e| fail(&format!("{path}: {e}")))
}

fn write_pgm(path: &str, img: &Image) {
    let mut buf = format!("P5\n{} {}\n255\n", img.w, img.h).into_bytes();
    buf.extend_from_slice(&img.px);
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&buf))
        .unwrap_or_else(|e| fail(&format!("cannot write {path}: {e}")));
}

/// One 5x5 Gaussian pass ([1 4 6 4 1] / 16 each way), clamped edges.
fn gaussian(img: &Image, tmp: &mut Vec<u16>) -> Image {
    let (w, h) = (img.w, img.h);
    tmp.clear();
    tmp.resize(w * h, 0);
    for y in 0..h {
        let row = &img.px[y * w..(y + 1) * w];
        let at = |x: isize| row[x.clamp(0, w as isize - 1) as usize] as u16;
        for x in 0..w {
            let xi = x as isize;
            tmp[y * w + x] = at(xi - 2) + 4 * at(xi - 1) + 6 * at(xi) + 4 * at(xi + 1) + at(xi + 2);
        }
    }
    let mut px = vec![0u8; w * h];
    for y in 0..h {
        let r = |d: isize| {
            let yy = (y as isize + d).clamp(0, h as isize - 1) as usize;
            &tmp[yy * w..(yy + 1) * w]
        };
        let (a, b, c, d, e) = (r(-2), r(-1), r(0), r(1), r(2));
        for x in 0..w {
            let s = a[x] as u32 + 4 * b[x] as u32 + 6 * c[x] as u32 + 4 * d[x] as u32 + e[x] as u32;
            px[y * w + x] = ((s + 128) >> 8) as u8;
        }
    }
    Image { w, h, px }
}

fn sobel(img: &Image) -> Image {
    let (w, h) = (img.w, img.h);
    let mut px = vec![0u8; w * h];
    let p = |x: usize, y: usize| img.px[y * w + x] as i32;
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let gx = p(x + 1, y - 1) + 2 * p(x + 1, y) + p(x + 1, y + 1)
                - p(x - 1, y - 1)
                - 2 * p(x - 1, y)
                - p(x - 1, y + 1);
            let gy = p(x - 1, y + 1) + 2 * p(x, y + 1) + p(x + 1, y + 1)
                - p(x - 1, y - 1)
                - 2 * p(x, y - 1)
                - p(x + 1, y - 1);
            let m = ((gx * gx + gy * gy) as f32).sqrt() / 4.0;
            px[y * w + x] = m.min(255.0) as u8;
        }
    }
    Image { w, h, px }
}

/// Otsu's threshold from the histogram.
fn otsu(img: &Image) -> u8 {
    let mut hist = [0u64; 256];
    for &p in &img.px {
        hist[p as usize] += 1;
    }
    let total = img.px.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut wb, mut sb, mut best, mut best_t) = (0.0, 0.0, -1.0, 0u8);
    for (t, &c) in hist.iter().enumerate() {
        wb += c as f64;
        if wb == 0.0 {
            continue;
        }
        let wf = total - wb;
        if wf == 0.0 {
            break;
        }
        sb += t as f64 * c as f64;
        let mb = sb / wb;
        let mf = (sum_all - sb) / wf;
        let between = wb * wf * (mb - mf) * (mb - mf);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

fn threshold(img: &Image, t: u8) -> Image {
    Image {
        w: img.w,
        h: img.h,
        px: img
            .px
            .iter()
            .map(|&p| if p > t { 255 } else { 0 })
            .collect(),
    }
}

/// 3x3 max (dilate) or min (erode).
fn morph(img: &Image, dilate: bool) -> Image {
    let (w, h) = (img.w, img.h);
    let mut px = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut v = if dilate { 0u8 } else { 255u8 };
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    let p = img.px[yy * w + xx];
                    v = if dilate { v.max(p) } else { v.min(p) };
                }
            }
            px[y * w + x] = v;
        }
    }
    Image { w, h, px }
}

fn median3(img: &Image) -> Image {
    let (w, h) = (img.w, img.h);
    let mut px = img.px.clone();
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let mut v = [0u8; 9];
            let mut k = 0;
            for yy in y - 1..=y + 1 {
                for xx in x - 1..=x + 1 {
                    v[k] = img.px[yy * w + xx];
                    k += 1;
                }
            }
            // Partial selection sort up to the middle element.
            for i in 0..=4 {
                let mut m = i;
                for j in i + 1..9 {
                    if v[j] < v[m] {
                        m = j;
                    }
                }
                v.swap(i, m);
            }
            px[y * w + x] = v[4];
        }
    }
    Image { w, h, px }
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = p;
    }
    x
}

/// Connected components (4-neighbour) of non-zero pixels: (count, largest size).
fn components(img: &Image) -> (u64, u64) {
    let (w, h) = (img.w, img.h);
    let mut parent: Vec<u32> = (0..(w * h) as u32).collect();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if img.px[i] == 0 {
                continue;
            }
            for j in [(x > 0).then(|| i - 1), (y > 0).then(|| i - w)]
                .into_iter()
                .flatten()
            {
                if img.px[j] != 0 {
                    let (a, b) = (find(&mut parent, i as u32), find(&mut parent, j as u32));
                    if a != b {
                        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                        parent[hi as usize] = lo;
                    }
                }
            }
        }
    }
    let mut size = vec![0u32; w * h];
    let mut count = 0;
    let mut largest = 0;
    for i in 0..w * h {
        if img.px[i] != 0 {
            let r = find(&mut parent, i as u32) as usize;
            if size[r] == 0 {
                count += 1;
            }
            size[r] += 1;
            largest = largest.max(size[r] as u64);
        }
    }
    (count, largest)
}

fn main() {
    let args = Args::from_env();
    let n = args.size(2048) as usize;
    if !(8..=16384).contains(&n) {
        fail("size must be between 8 and 16384");
    }
    let passes = args.num("passes", 4).max(1);
    let mut out = common::stdout();

    if let Some(path) = args.opt("make-input") {
        let img = synthesize(n);
        write_pgm(path, &img);
        writeln!(
            out,
            "wrote {path}: {}x{} checksum {:016x}",
            img.w,
            img.h,
            img.checksum()
        )
        .unwrap();
        out.flush().unwrap();
        return;
    }

    let img = match args.opt("input") {
        Some(path) => {
            let img = read_image(path);
            writeln!(out, "input {path}: {}x{}", img.w, img.h).unwrap();
            img
        }
        None => {
            writeln!(out, "input synthetic: {n}x{n}").unwrap();
            synthesize(n)
        }
    };
    let mut all = Fnv::new();
    let mut stage = |out: &mut dyn Write, name: &str, im: &Image| {
        let c = im.checksum();
        all.u64(c);
        writeln!(
            out,
            "stage {name:<10} checksum {c:016x} mean {:.4}",
            im.mean()
        )
        .unwrap();
    };
    stage(&mut out, "input", &img);

    let mut tmp = Vec::new();
    let mut blurred = img;
    for i in 0..passes {
        blurred = gaussian(&blurred, &mut tmp);
        stage(&mut out, &format!("blur{}", i + 1), &blurred);
    }
    let edges = sobel(&blurred);
    stage(&mut out, "sobel", &edges);
    let t = otsu(&edges);
    writeln!(out, "otsu threshold {t}").unwrap();
    let mask = threshold(&edges, t);
    stage(&mut out, "threshold", &mask);
    let closed = morph(&morph(&mask, true), false);
    stage(&mut out, "close", &closed);
    let med = median3(&blurred);
    stage(&mut out, "median", &med);
    let (count, largest) = components(&closed);
    writeln!(out, "components {count} largest {largest}").unwrap();

    if let Some(path) = args.opt("output") {
        write_pgm(path, &closed);
        writeln!(out, "wrote {path}: {}x{}", closed.w, closed.h).unwrap();
    }
    all.u64(count);
    all.u64(largest);
    writeln!(out, "checksum {:016x}", all.value()).unwrap();
    out.flush().unwrap();
}
