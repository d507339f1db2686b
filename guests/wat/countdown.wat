;; countdown — the smallest guest: prints "countdown N" for N = 4000 down to 1, then
;; "liftoff", one fd_write per line, with a short busy loop between lines so that a run
;; lasts a few hundred milliseconds. Hand-written so its loop structure is obvious.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: two iovecs (ptr, len); 16: bytes written; 32: "countdown "; 64..80: digits + "\n"
  (data (i32.const 32) "countdown ")
  (data (i32.const 48) "liftoff\n")
  (func (export "_start")
    (local $i i32) (local $n i32) (local $p i32) (local $k i32)
    (local.set $i (i32.const 4000))
    (loop $line
      ;; Digits of $i, written backwards ending at the newline at 79.
      (i32.store8 (i32.const 79) (i32.const 10))
      (local.set $p (i32.const 79))
      (local.set $n (local.get $i))
      (loop $digit
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (i32.store8 (local.get $p)
          (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
        (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
        (br_if $digit (local.get $n)))
      (i32.store (i32.const 0) (i32.const 32))
      (i32.store (i32.const 4) (i32.const 10))
      (i32.store (i32.const 8) (local.get $p))
      (i32.store (i32.const 12) (i32.sub (i32.const 80) (local.get $p)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 2) (i32.const 16)))
      ;; Busy work between lines.
      (local.set $k (i32.const 40000))
      (loop $spin
        (local.set $k (i32.sub (local.get $k) (i32.const 1)))
        (br_if $spin (local.get $k)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $line (local.get $i)))
    (i32.store (i32.const 0) (i32.const 48))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
