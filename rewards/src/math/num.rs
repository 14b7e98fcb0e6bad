//! Exact rationals (i128) and a small complex type for evaluation.
#![allow(clippy::should_implement_trait)]

/// An exact rational `num/den`, `den > 0`, in lowest terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Q {
    pub num: i128,
    pub den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Q {
    pub fn int(n: i128) -> Q {
        Q { num: n, den: 1 }
    }
    pub fn new(num: i128, den: i128) -> Option<Q> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den).max(1);
        let (mut n, mut d) = (num / g, den / g);
        if d < 0 {
            n = n.checked_neg()?;
            d = d.checked_neg()?;
        }
        Some(Q { num: n, den: d })
    }
    pub fn is_int(&self) -> bool {
        self.den == 1
    }
    /// Parses "12", "1.25", "1.5e-3", "2E10" exactly (None on overflow).
    pub fn parse(t: &str) -> Option<Q> {
        let (mant, exp) = match t.find(['e', 'E']) {
            Some(p) => (&t[..p], t[p + 1..].parse::<i32>().ok()?),
            None => (t, 0),
        };
        let (ip, fp) = mant.split_once('.').unwrap_or((mant, ""));
        if ip.is_empty() && fp.is_empty() {
            return None;
        }
        let digits = format!("{ip}{fp}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return None;
        }
        let n: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
        let e = exp - fp.len() as i32;
        if e.abs() > 36 {
            return if n == 0 { Some(Q::int(0)) } else { None };
        }
        let p = 10i128.checked_pow(e.unsigned_abs())?;
        if e >= 0 {
            Some(Q::int(n.checked_mul(p)?))
        } else {
            Q::new(n, p)
        }
    }
    pub fn add(self, o: Q) -> Option<Q> {
        Q::new(self.num.checked_mul(o.den)?.checked_add(o.num.checked_mul(self.den)?)?, self.den.checked_mul(o.den)?)
    }
    pub fn sub(self, o: Q) -> Option<Q> {
        self.add(Q { num: o.num.checked_neg()?, den: o.den })
    }
    pub fn mul(self, o: Q) -> Option<Q> {
        let g1 = gcd(self.num, o.den).max(1);
        let g2 = gcd(o.num, self.den).max(1);
        Q::new((self.num / g1).checked_mul(o.num / g2)?, (self.den / g2).checked_mul(o.den / g1)?)
    }
    pub fn div(self, o: Q) -> Option<Q> {
        if o.num == 0 {
            return None;
        }
        self.mul(Q::new(o.den, o.num)?)
    }
    pub fn neg(self) -> Option<Q> {
        Some(Q { num: self.num.checked_neg()?, den: self.den })
    }
    pub fn powi(self, e: i128) -> Option<Q> {
        if e.abs() > 256 {
            return None;
        }
        let base = if e < 0 { Q::int(1).div(self)? } else { self };
        let mut r = Q::int(1);
        for _ in 0..e.abs() {
            r = r.mul(base)?;
        }
        Some(r)
    }
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// A complex number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct C {
    pub re: f64,
    pub im: f64,
}

impl C {
    pub const fn new(re: f64, im: f64) -> C {
        C { re, im }
    }
    pub fn real(re: f64) -> C {
        C { re, im: 0.0 }
    }
    pub fn add(self, o: C) -> C {
        C::new(self.re + o.re, self.im + o.im)
    }
    pub fn sub(self, o: C) -> C {
        C::new(self.re - o.re, self.im - o.im)
    }
    pub fn mul(self, o: C) -> C {
        if self.im == 0.0 && o.im == 0.0 {
            return C::real(self.re * o.re);
        }
        C::new(self.re * o.re - self.im * o.im, self.re * o.im + self.im * o.re)
    }
    pub fn div(self, o: C) -> C {
        if self.im == 0.0 && o.im == 0.0 {
            return C::real(self.re / o.re);
        }
        let d = o.re * o.re + o.im * o.im;
        C::new((self.re * o.re + self.im * o.im) / d, (self.im * o.re - self.re * o.im) / d)
    }
    pub fn neg(self) -> C {
        C::new(-self.re, -self.im)
    }
    pub fn abs(self) -> f64 {
        self.re.hypot(self.im)
    }
    pub fn is_real(self) -> bool {
        self.im == 0.0
    }
    pub fn is_finite(self) -> bool {
        self.re.is_finite() && self.im.is_finite()
    }
    pub fn exp(self) -> C {
        let m = self.re.exp();
        if self.im == 0.0 {
            return C::real(m);
        }
        C::new(m * self.im.cos(), m * self.im.sin())
    }
    pub fn ln(self) -> C {
        if self.im == 0.0 && self.re > 0.0 {
            return C::real(self.re.ln());
        }
        C::new(self.abs().ln(), self.im.atan2(self.re))
    }
    pub fn sqrt(self) -> C {
        if self.im == 0.0 && self.re >= 0.0 {
            return C::real(self.re.sqrt());
        }
        let r = self.abs();
        let re = ((r + self.re) / 2.0).sqrt();
        let im = ((r - self.re) / 2.0).sqrt().copysign(if self.im == 0.0 { 1.0 } else { self.im });
        C::new(re, im)
    }
    pub fn pow(self, e: C) -> C {
        if e.im == 0.0 && e.re.fract() == 0.0 && e.re.abs() <= 64.0 {
            let n = e.re as i64;
            let mut r = C::real(1.0);
            let base = if n < 0 { C::real(1.0).div(self) } else { self };
            for _ in 0..n.abs() {
                r = r.mul(base);
            }
            return r;
        }
        if self.im == 0.0 && e.im == 0.0 {
            if self.re >= 0.0 {
                return C::real(self.re.powf(e.re));
            }
            // real odd roots of negatives: (-8)^(1/3) = -2
            let inv = 1.0 / e.re;
            if (inv - inv.round()).abs() < 1e-9 && (inv.round() as i64) % 2 != 0 {
                return C::real(-(-self.re).powf(e.re));
            }
        }
        if self.re == 0.0 && self.im == 0.0 {
            return C::real(0.0);
        }
        self.ln().mul(e).exp()
    }
    pub fn sin(self) -> C {
        if self.im == 0.0 {
            return C::real(self.re.sin());
        }
        C::new(self.re.sin() * self.im.cosh(), self.re.cos() * self.im.sinh())
    }
    pub fn cos(self) -> C {
        if self.im == 0.0 {
            return C::real(self.re.cos());
        }
        C::new(self.re.cos() * self.im.cosh(), -self.re.sin() * self.im.sinh())
    }
}
