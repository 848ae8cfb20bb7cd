// The digits model (sample_apps/digits) in an Android app through ExecuTorch's Android runtime
// (org.pytorch:executorch-android). NOT compiled in this repository: no Android toolchain here.
// API as in https://docs.pytorch.org/executorch/stable/using-executorch-android.html:
// Module.load(path), Tensor.fromBlob(FloatArray, LongArray), EValue.from(tensor),
// module.forward(...)[0].toTensor().dataAsFloatArray.
package com.example.digits

import android.content.Context
import android.graphics.Bitmap
import android.graphics.Color
import java.io.File
import kotlin.math.exp
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

class DigitsClassifier(context: Context, assetName: String = "model.pte") : AutoCloseable {

    // Module.load takes a file path, not an asset stream: copy the .pte out of the APK once.
    private val module: Module = Module.load(copyAssetToFiles(context, assetName).absolutePath)

    /** Softmax scores for the digits 0..9 (index = digit). Run it off the UI thread. */
    fun classify(bitmap: Bitmap): FloatArray {
        val input = Tensor.fromBlob(toModelInput(bitmap), longArrayOf(1, 1, SIZE.toLong(), SIZE.toLong()))
        val logits = module.forward(EValue.from(input))[0].toTensor().dataAsFloatArray
        return softmax(logits)
    }

    override fun close() = module.destroy()

    companion object {
        const val SIZE = 8 // the model's input is (1, 1, 8, 8) float32, see the build's manifest.json

        fun copyAssetToFiles(context: Context, name: String): File {
            val file = File(context.filesDir, name)
            // An app update may ship a new model: copy again when the APK is newer than the copy.
            // (Not assets.openFd(...).length: that throws for compressed assets, and .pte is compressed by default.)
            val apkTime = File(context.applicationInfo.sourceDir).lastModified()
            if (!file.exists() || file.lastModified() < apkTime) {
                context.assets.open(name).use { input -> file.outputStream().use { input.copyTo(it) } }
            }
            return file
        }

        /**
         * The preprocessing of sample_apps/rpi_classifier/classify.py's digits preset:
         * centre square crop, gray (BT.601 luma), area-average down to 8x8, invert when the
         * border is light (ink on paper -> the data set's bright strokes on dark), stretch to
         * [0, 1]. The model was trained on sklearn's load_digits() scaled to [0, 1] (raw / 16).
         */
        fun toModelInput(bitmap: Bitmap): FloatArray {
            val side = minOf(bitmap.width, bitmap.height)
            val pixels = IntArray(side * side)
            bitmap.getPixels(pixels, 0, side, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side)
            val gray = FloatArray(side * side) { i ->
                val c = pixels[i]
                (0.299f * Color.red(c) + 0.587f * Color.green(c) + 0.114f * Color.blue(c)) / 255f
            }
            val border = (0 until side).flatMap { listOf(gray[it], gray[(side - 1) * side + it], gray[it * side], gray[it * side + side - 1]) }
            val invert = border.sorted()[border.size / 2] > 0.5f
            val out = FloatArray(SIZE * SIZE)
            for (y in 0 until SIZE) for (x in 0 until SIZE) {
                // Each output cell averages the block of source pixels it covers (no aliasing).
                val y0 = y * side / SIZE; val y1 = maxOf(y0 + 1, (y + 1) * side / SIZE)
                val x0 = x * side / SIZE; val x1 = maxOf(x0 + 1, (x + 1) * side / SIZE)
                var sum = 0f
                for (yy in y0 until y1) for (xx in x0 until x1) sum += gray[yy * side + xx]
                val mean = sum / ((y1 - y0) * (x1 - x0))
                out[y * SIZE + x] = if (invert) 1f - mean else mean
            }
            val lo = out.min(); val hi = out.max()
            if (hi - lo > 1e-6f) for (i in out.indices) out[i] = (out[i] - lo) / (hi - lo)
            return out
        }

        fun softmax(logits: FloatArray): FloatArray {
            val max = logits.max()
            val e = logits.map { exp((it - max).toDouble()).toFloat() }
            val sum = e.sum()
            return FloatArray(e.size) { e[it] / sum }
        }
    }
}
