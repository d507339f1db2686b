;; ticker — fixed work in instances, for the executor (executor/) and its benchmark.
;;
;;   ticker SPINS [INSTANCES]
;;
;; Each instance runs SPINS steps of a xorshift32 generator (state carried from one
;; instance to the next), then writes one line "tick I X\n" (I the instance number from 1,
;; X the generator state, both decimal) with one fd_write. That write is the host-visible
;; end of the instance: the executor runs a node-bound task's instance until it sees it.
;; After INSTANCES instances (0 or absent: forever) it writes "done\n" and returns.
;; Hand-written so that the yield points are obvious: the spin loop is call-free (a
;; wrapped loop, pausable at every iteration), the instance loop checks before fd_write.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec (ptr, len); 16: bytes written; 20: argc; 24: argv buffer size;
  ;; 64..128: the line being built (ends at 127); 128: "done\n";
  ;; 1024..2048: argv pointers; 2048..65536: argv strings.
  (data (i32.const 128) "done\n")

  ;; The decimal number at `p` (NUL-terminated, digits only; anything else ends it).
  (func $parse (param $p i32) (result i32)
    (local $n i32) (local $c i32)
    (block $end
      (loop $digit
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $end (i32.lt_u (local.get $c) (i32.const 48)))
        (br_if $end (i32.gt_u (local.get $c) (i32.const 57)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
                               (i32.sub (local.get $c) (i32.const 48))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (local.get $n))

  ;; Writes `n` in decimal ending just before `end`; returns the first byte's address.
  (func $digits (param $n i32) (param $end i32) (result i32)
    (local $p i32)
    (local.set $p (local.get $end))
    (loop $d
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $d (local.get $n)))
    (local.get $p))

  (func (export "_start")
    (local $spins i32) (local $count i32) (local $i i32) (local $k i32)
    (local $x i32) (local $p i32) (local $argc i32)
    (local.set $spins (i32.const 100000))
    (drop (call $args_sizes_get (i32.const 20) (i32.const 24)))
    (local.set $argc (i32.load (i32.const 20)))
    (if (i32.and (i32.le_u (local.get $argc) (i32.const 256))
                 (i32.le_u (i32.load (i32.const 24)) (i32.const 63000)))
      (then
        (drop (call $args_get (i32.const 1024) (i32.const 2048)))
        (if (i32.ge_u (local.get $argc) (i32.const 2))
          (then (local.set $spins (call $parse (i32.load (i32.const 1028))))))
        (if (i32.ge_u (local.get $argc) (i32.const 3))
          (then (local.set $count (call $parse (i32.load (i32.const 1032))))))))
    (local.set $x (i32.const 2463534242))
    (loop $instance
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      ;; The work: SPINS xorshift32 steps.
      (local.set $k (local.get $spins))
      (block $worked
        (br_if $worked (i32.eqz (local.get $k)))
        (loop $spin
          (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 13))))
          (local.set $x (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const 17))))
          (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 5))))
          (local.set $k (i32.sub (local.get $k) (i32.const 1)))
          (br_if $spin (local.get $k))))
      ;; "tick I X\n" ending at 127.
      (i32.store8 (i32.const 127) (i32.const 10))
      (local.set $p (call $digits (local.get $x) (i32.const 127)))
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.const 32))
      (local.set $p (call $digits (local.get $i) (local.get $p)))
      (local.set $p (i32.sub (local.get $p) (i32.const 5)))
      (i32.store (local.get $p) (i32.const 0x6b636974)) ;; "tick"
      (i32.store8 (i32.add (local.get $p) (i32.const 4)) (i32.const 32))
      (i32.store (i32.const 0) (local.get $p))
      (i32.store (i32.const 4) (i32.sub (i32.const 128) (local.get $p)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
      (br_if $instance (i32.or (i32.eqz (local.get $count))
                               (i32.lt_u (local.get $i) (local.get $count)))))
    (i32.store (i32.const 0) (i32.const 128))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
